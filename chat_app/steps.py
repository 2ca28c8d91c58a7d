"""The chain steps the page shows under an answer ("Used medquad - generate - fine-tuned"): Chainlit's
LangChain callback handler, with two corrections, kept apart from ``app.py`` (which reads the catalogue and
installs its Chainlit hooks when imported) so that tests can drive it.

- A streamed run's input. LangChain starts a run that it streams (``astream``: every answer the
  model writes as it goes) before its input has arrived, reporting the input as ``{"input": ""}``,
  and hands the real one over only when the run ends (``on_chain_end``'s or ``on_chain_error``'s
  ``inputs``). Chainlit 2.12 sets a step's input at the start only, so every generated answer's
  steps showed ``{"input": ""}``; here the input is filled in when the run ends.
- A stopped run (``chains.stopped_by_user``) ends with the app's reason ("stopped by you", "stopped:
  the page was closed") rather than as a failed step with an error mark.

Both lean on internals, as read in Chainlit 2.12 and langchain-core 1.8: the tracer's
``_on_run_update`` (a run ended), ``_get_chain_inputs`` and ``process_content``. The tests in
tests/test_app_handlers.py drive this class through a real chain, so an upgrade that moves them
fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import chainlit as cl
from chainlit.context import context_var
from chainlit.langchain.callbacks import process_content
from chainlit.utils import utc_now

from chat_app import chains

# runs not shown as steps (within them, runs of the kinds in KEEP are)
IGNORE = ["RunnableSequence", "RunnableParallel", "RunnableAssign", "RunnableLambda", "<lambda>",
          "prompt template", "history"]
KEEP = ["retriever", "llm", "agent", "chain", "tool", "prompt"]

# what a step's input is when LangChain started its run before the input had arrived (a stream)
STREAMED_INPUT = process_content({"input": ""})[0]


class StepsTracer(cl.LangchainCallbackHandler):
    """Chainlit's LangChain steps, with a streamed run's input filled in when the run ends, and a
    run the user or the app stopped ended with ``stop_reason(the message's task)``."""

    def __init__(self, *, stop_reason: Callable[[asyncio.Task | None], str], to_ignore=None, to_keep=None,
                 **kwargs):
        super().__init__(to_ignore=IGNORE if to_ignore is None else to_ignore,
                         to_keep=KEEP if to_keep is None else to_keep, **kwargs)
        self.stop_reason = stop_reason
        # the message's task, whose stop reason the steps give: LangChain calls handlers in tasks of its own
        self.message_task = asyncio.current_task()

    def _fill_streamed_input(self, run_id, inputs) -> None:
        """Give the step of a run started without its input (``STREAMED_INPUT``) the input LangChain
        reported at its end, shown as Chainlit shows an input known from the start."""
        step = self.steps.get(str(run_id))
        if step is None or step.type == "llm" or inputs is None or step.input != STREAMED_INPUT:
            return
        step.input, language = process_content(inputs)
        step.show_input = language or False

    async def _on_run_update(self, run) -> None:  # a run ended; LangChain has set its inputs
        self._fill_streamed_input(run.id, run.inputs)
        await super()._on_run_update(run)

    async def _on_error(self, error: BaseException, *, run_id, **kwargs):
        if kwargs.get("inputs") is not None:
            self._fill_streamed_input(run_id, self._get_chain_inputs(kwargs["inputs"]))
        step = self.steps.get(str(run_id))
        if not chains.stopped_by_user(error) or step is None:
            return await super()._on_error(error, run_id=run_id, **kwargs)
        context_var.set(self.context)
        step.output, step.end = self.stop_reason(self.message_task), utc_now()
        await step.update()

    on_chain_error = on_llm_error = on_tool_error = on_retriever_error = _on_error
