// Keyboard-first reviewing. Every action also has a button or form that works without this file.
(function () {
  "use strict";
  // On the rank page the items moved through are the candidate replies.
  const turns = () => Array.from(document.querySelectorAll(".turn.supporter[data-turn], .candidate"));
  let current = 0;

  function focusTurn(index) {
    const list = turns();
    if (!list.length) return;
    current = Math.max(0, Math.min(index, list.length - 1));
    list.forEach((el, i) => el.classList.toggle("current", i === current));
    list[current].focus({ preventScroll: true });
    list[current].scrollIntoView({ block: "nearest" });
  }

  function currentTurn() {
    return turns()[current];
  }

  function setStrategyByNumber(n) {
    const turn = currentTurn();
    const legend = document.querySelectorAll(".legend li")[n - 1];
    if (!turn || !legend) return;
    const select = turn.querySelector("select[name=strategy]");
    const name = legend.textContent.replace(/^\s*\d+\s*/, "").trim();
    const option = Array.from(select.options).find((o) => o.textContent.trim() === name);
    if (!option) return;
    select.value = option.value;
    select.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function confirmSuggestion() {
    const select = currentTurn() && currentTurn().querySelector("select[name=strategy]");
    if (select) select.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function editTurn() {
    const turn = currentTurn();
    if (!turn) return;
    const details = turn.querySelector("details.edit");
    details.open = true;
    const area = details.querySelector("textarea");
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target.matches("input, textarea, select");
    if (typing) {
      if (event.key === "Escape") {
        const details = target.closest("details.edit");
        if (details) details.open = false;
        target.blur();
        const turn = target.closest(".turn");
        if (turn) turn.focus();
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        // A form swapped in a moment ago may not be wired to htmx yet: wire it, then submit.
        if (window.htmx && target.form.hasAttribute("hx-post")) window.htmx.process(target.form);
        target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const click = (id) => { const el = document.getElementById(id); if (el) { event.preventDefault(); el.click(); } };
    switch (event.key) {
      case "j": event.preventDefault(); focusTurn(current + 1); break;
      case "k": event.preventDefault(); focusTurn(current - 1); break;
      case "e": event.preventDefault(); editTurn(); break;
      case "c": event.preventDefault(); confirmSuggestion(); focusTurn(current + 1); break;
      case "t": {
        const select = currentTurn() && currentTurn().querySelector("select[name=strategy]");
        if (select) { event.preventDefault(); select.focus(); }
        break;
      }
      case "a": click("accept"); break;
      case "r": {
        const box = document.querySelector("#reject-reasons input");
        if (box) { event.preventDefault(); box.focus(); }
        break;
      }
      case "s": click("skip"); break;
      case "n": {
        const form = document.getElementById("next-form");
        if (form) { event.preventDefault(); form.requestSubmit(); }
        break;
      }
      case "?": {
        const dialog = document.getElementById("shortcuts");
        if (dialog) { event.preventDefault(); dialog.open ? dialog.close() : dialog.showModal(); }
        break;
      }
      case "x": {
        const box = currentTurn() && currentTurn().querySelector("input[type=checkbox]");
        if (box) { event.preventDefault(); box.checked = !box.checked; }
        break;
      }
      case "Enter": {
        const form = document.getElementById("rank-form");
        if (form) { event.preventDefault(); form.requestSubmit(); }
        break;
      }
      default:
        if (/^[1-9]$/.test(event.key)) {
          event.preventDefault();
          const rankInput = currentTurn() && currentTurn().querySelector("input[type=number]");
          if (rankInput) { rankInput.value = event.key; focusTurn(current + 1); }
          else setStrategyByNumber(Number(event.key));
        }
    }
  });

  // In the reject reasons, Enter rejects.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.closest("#reject-reasons")) {
      event.preventDefault();
      document.getElementById("reject").click();
    }
  });

  // After my own edit the dialogue moves to a new version: later edits are based on it.
  document.body.addEventListener("dialogueVersion", (event) => {
    document.querySelectorAll("input.version").forEach((input) => { input.value = event.detail.value; });
  });

  // Keep the current turn after htmx swaps it.
  document.body.addEventListener("htmx:afterSwap", () => focusTurn(current));

  const help = document.getElementById("help-button");
  if (help) help.addEventListener("click", () => document.getElementById("shortcuts").showModal());
  if (turns().length) focusTurn(0);
})();
