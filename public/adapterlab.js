// Keyboard and screen-reader fixes for Chainlit 2.12's page (the config's `custom_js`); each has a
// browser test in tests/test_app_e2e.py.
//
// 1. Chainlit's icon-only buttons have no accessible name: a screen reader says "button" for
//    New chat, Attach, Settings, Send, Stop, the status panel's close arrow, an answer's copy and
//    feedback buttons, the history's toggle and search, the login's show-password eye and, on a
//    phone, Compare's command buttons. They get one here.
//    Send and Stop are one element whose id changes, so a name follows the id.
// 2. When the focused control leaves the page or is disabled (the settings dialog closes, Stop ends
//    an answer, a starter is used), focus fell back to the page itself, many Tab presses from the
//    message box.
//    It goes to the message box instead (not on touch screens, where that would pop up the keyboard).
// 3. A wrong password showed, beside the login form's own message, a toast with the server's raw
//    error, "Unauthorized: credentialssignin"; it is hidden (chat_app/page_text.py words the form's).
//    So is "Couldn't resume chat: Thread not found." (the address of a deleted chat): the new chat
//    the page opens says it in a message that stays (chat_app/app.py, on_chat_start).
// 4. Enter in the history's rename dialog did nothing; it confirms, as in any one-field form.
// 5. The settings' sliders had no name ("slider"); each gets its label's text.
// 6. Signed in, Chainlit moves a chat to its address (/thread/<id>) at its first message from the
//    history sidebar, which a phone mounts only when its sheet is opened: the address stayed "/",
//    and a reload opened a blank chat. The app sends the chat's id (a window message,
//    chat_app/app.py _give_the_chat_its_address); the address changes if Chainlit's has not.
// 7. The app's messages hold invisible word joiners (U+2060) where the page's markdown would
//    otherwise make a link of an address or drop "EGFR:negative" as a directive (chat_app/page_text.py
//    ``shown``, handlers.py ``cell``). Text copied from the page, or with an answer's Copy button,
//    comes without them, as typed.
// 8. A history entry's "Chat options" (rename, delete) is a <div> that Tab never reached, so a chat
//    could not be renamed or deleted from the keyboard. It is made focusable (role button); Radix's
//    menu trigger already opens on Enter, Space and ArrowDown. public/adapterlab.css shows it while
//    it or its entry has focus (it showed on hover only) and hides the closed history sidebar, which
//    stayed in the Tab order off the left edge of the screen.
(() => {
  const NAMES = {
    "new-chat-button": "New chat",
    "upload-button": "Attach files",
    "chat-settings-open-modal": "Settings",
    "chat-submit": "Send message",
    "stop-button": "Stop the answer",
    "chat-input": "Message",
    "sidebar-trigger-button": "Show or hide the chat history",
    "search-chats-button": "Search chats",
    "thread-options": "Chat options",
  };
  const ICON_NAMES = {
    "lucide-arrow-left": "Close the panel",
    "lucide-copy": "Copy",
    "lucide-thumbs-up": "Helpful",
    "lucide-thumbs-down": "Not helpful",
    "lucide-eye": "Show the password",
    "lucide-eye-off": "Hide the password",
  };
  const touchScreen = window.matchMedia("(pointer: coarse)").matches;
  let focused = null;

  function nameButtons() {
    for (const [id, name] of Object.entries(NAMES)) {
      // by attribute, not getElementById: with the history sidebar the page has two "new-chat-button"s
      for (const element of document.querySelectorAll(`[id="${id}"]`)) {
        if (!element.hasAttribute("aria-label") || "adapterlabNamed" in element.dataset) giveName(element, name);
      }
    }
    // Compare's command buttons show their name as text, except on a phone, where the text is hidden
    for (const button of document.querySelectorAll('button[id^="command-"]')) {
      if (!button.getAttribute("aria-label")) giveName(button, button.id.slice("command-".length));
    }
    for (const [icon, name] of Object.entries(ICON_NAMES)) {
      for (const button of document.querySelectorAll(`button:not([aria-label]):has(> svg.${icon})`)) {
        if (!button.textContent.trim()) giveName(button, name);
      }
    }
  }

  // Settings sliders: Radix puts role="slider" on an inner thumb that the <label for=...> of the
  // slider's root does not reach, so a screen reader said "slider" with no name. The label's own text
  // (without the value badge inside it) names the thumb.
  function nameSliders() {
    for (const thumb of document.querySelectorAll('[role="slider"]:not([aria-label])')) {
      const root = thumb.closest("[id]");
      const label = root && document.querySelector(`label[for="${CSS.escape(root.id)}"]`);
      const text = label && [...label.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE)
        .map((n) => n.textContent).join("").trim();
      if (text) giveName(thumb, text);
    }
  }

  function giveName(element, name) {
    if (element.getAttribute("aria-label") === name) return;
    element.setAttribute("aria-label", name);
    element.dataset.adapterlabNamed = "";
  }

  function makeChatOptionsFocusable() {
    for (const options of document.querySelectorAll('[id="thread-options"]:not([tabindex])')) {
      options.tabIndex = 0;
      options.setAttribute("role", "button");
    }
  }

  function refocusIfFocusWasRemoved() {
    if (touchScreen || !focused || (focused.isConnected && !focused.disabled)) return;
    if (document.activeElement && document.activeElement !== document.body) return;
    const input = document.getElementById("chat-input");
    if (input && !input.disabled) input.focus();
    focused = input;
  }

  const TOASTS_SAID_OTHERWISE = [
    /^\s*Unauthorized: credentialssignin\s*$/i,
    /^\s*Couldn't resume chat: Thread not found\.?\s*$/i,
  ];

  function hideToastsSaidOtherwise() {
    for (const toast of document.querySelectorAll("[data-sonner-toast]")) {
      if (TOASTS_SAID_OTHERWISE.some((text) => text.test(toast.textContent))) toast.style.display = "none";
    }
  }

  function confirmRenameOnEnter(event) {
    if (event.key !== "Enter" || event.isComposing || event.shiftKey) return;
    const input = event.target;
    const dialog = input instanceof HTMLInputElement && input.id === "name" && input.closest('[role="dialog"]');
    if (!dialog) return;
    // the footer's buttons are Cancel then Confirm; the dialog's close button holds an X icon
    const buttons = [...dialog.querySelectorAll("button")].filter((b) => !b.querySelector("svg.lucide-x"));
    const confirm = buttons[buttons.length - 1];
    if (confirm && !confirm.disabled) {
      event.preventDefault();
      confirm.click();
    }
  }

  function moveToTheChatsAddress(event) {
    const id = event.data && event.data.adapterlab_thread;
    if (event.origin !== window.location.origin || typeof id !== "string" || !/^[0-9a-f-]+$/.test(id)) return;
    // Chainlit's sidebar, where it is shown, moves first (through its router); this only fills in
    // where it did not. Only if the page is still where the message found it: its router gives every
    // move a new history key, and "New chat" (or another profile) meanwhile is a new chat at "/" too,
    // which this moved to the address of the chat it had left
    const entry = window.history.state && window.history.state.key;
    setTimeout(() => {
      const still = (window.history.state && window.history.state.key) === entry;
      if (still && window.location.pathname === "/") {
        window.history.replaceState(window.history.state, "", `/thread/${id}`);
      }
    }, 1500);
  }

  const JOINER = "\u2060";

  function copyWithoutJoiners(event) {
    const selection = window.getSelection();
    const text = String(selection || "");
    if (!text.includes(JOINER) || !event.clipboardData) {
      return;  // a selection in the message box is not the page's text: copied as it is
    }
    const html = document.createElement("div");
    for (let i = 0; i < selection.rangeCount; i += 1) {
      html.appendChild(selection.getRangeAt(i).cloneContents());
    }
    event.clipboardData.setData("text/plain", text.replaceAll(JOINER, ""));
    event.clipboardData.setData("text/html", html.innerHTML.replaceAll(JOINER, ""));
    event.preventDefault();
  }

  function withoutJoiners(item) {  // a ClipboardItem; its parts stay promises (Safari's user gesture)
    return new ClipboardItem(Object.fromEntries(item.types.map((type) => [type, item.getType(type).then(
      async (blob) => (type.startsWith("text/")
        ? new Blob([(await blob.text()).replaceAll(JOINER, "")], { type }) : blob))])));
  }

  const clipboard = navigator.clipboard;  // Chainlit's Copy buttons write through it
  if (clipboard && clipboard.write && window.ClipboardItem) {
    const write = clipboard.write.bind(clipboard);
    clipboard.write = (items) => {
      let cleaned;
      try {
        cleaned = Array.from(items, withoutJoiners);
      } catch (error) {
        cleaned = items;  // copied as it is rather than not at all
      }
      return write(cleaned);
    };
  }
  if (clipboard && clipboard.writeText) {
    const writeText = clipboard.writeText.bind(clipboard);
    clipboard.writeText = (text) => writeText(String(text).replaceAll(JOINER, ""));
  }
  document.addEventListener("copy", copyWithoutJoiners);
  window.addEventListener("message", moveToTheChatsAddress);
  document.addEventListener("keydown", confirmRenameOnEnter, true);
  document.addEventListener("focusin", (event) => { focused = event.target; });
  new MutationObserver(() => {
    nameButtons();
    nameSliders();
    makeChatOptionsFocusable();
    refocusIfFocusWasRemoved();
    hideToastsSaidOtherwise();
  }).observe(document.documentElement,
    { childList: true, subtree: true, attributes: true, attributeFilter: ["id", "disabled"] });
})();
