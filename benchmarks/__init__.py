"""How fast adapterlab is: the benchmarks behind ``adapterlab bench`` and their results.

``serve`` times the runtime the app uses (latency, throughput, adapter switches, concurrent streams),
``train`` compares adapterlab's training with the notebook recipe it replaces, ``qlora`` measures
QLoRA on a Llama-3.1-8B-shaped model, and ``table`` writes the README's benchmark table from the
JSON files in ``results/``. Benchmarks read ``adapters`` and ``training``; neither imports them.
"""
