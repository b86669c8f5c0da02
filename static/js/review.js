// Keyboard-first reviewing. Every action also has a button or form that works without this file.
(function () {
  "use strict";
  const rankForm = document.getElementById("rank-form");
  // On the rank page the items moved through are the candidate replies.
  const ITEMS = ".turn.supporter[data-turn], .candidate";
  const turns = () => Array.from(document.querySelectorAll(ITEMS));
  let current = 0;

  function markCurrent(list) {
    list.forEach((el, i) => el.classList.toggle("current", i === current));
  }

  function focusTurn(index) {
    const list = turns();
    if (!list.length) return;
    current = Math.max(0, Math.min(index, list.length - 1));
    markCurrent(list);
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
    if (!details) return;
    details.open = true;
    const area = details.querySelector("textarea");
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  // ---- a and r ask first: a bar says what the next key does. A click on a button decides at once.

  let asking = null; // {decision, bar, back}: the open question and where the focus goes back to
  const reasons = () => document.getElementById("reject-reasons");
  const hasReason = () => Boolean(document.querySelector("#reject-reasons input:checked"));

  function ask(decision) {
    const bar = document.getElementById(`confirm-${decision}`);
    if (!bar) return;
    const active = document.activeElement;
    const back = asking ? asking.back : active !== document.body ? active : null;
    if (asking) asking.bar.hidden = true;
    asking = { decision, bar, back };
    const missing = bar.querySelector(".missing");
    if (missing) missing.hidden = true;
    bar.hidden = false;
    if (decision === "reject" && !hasReason()) reasons().querySelector("input").focus();
    else bar.focus();
  }

  function cancel(refocus) {
    if (!asking) return;
    const { bar, back } = asking;
    asking = null;
    bar.hidden = true;
    if (!refocus) return;
    const target = back && document.contains(back) ? back : currentTurn();
    if (target) target.focus();
  }

  function decide() {
    if (asking.decision === "reject" && !hasReason()) {
      asking.bar.querySelector(".missing").hidden = false;
      reasons().querySelector("input").focus();
      return;
    }
    // A real submit button of the decision form, so the decision travels as without JavaScript.
    document.getElementById(`${asking.decision}-confirm`).click();
  }

  const inQuestion = (el) =>
    asking && (asking.bar.contains(el) || (asking.decision === "reject" && reasons().contains(el)));

  // A click, or the focus going anywhere else, cancels the question.
  document.addEventListener("pointerdown", (event) => {
    if (asking && !inQuestion(event.target)) cancel(false);
  });

  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-confirm-back]")) cancel(true);
    // Reject with no reason ticked would only come back with an error: ask for the reason here.
    if (event.target.closest("#reject") && !hasReason()) {
      event.preventDefault();
      ask("reject");
      asking.bar.querySelector(".missing").hidden = false;
    }
  });

  // Whatever takes the focus (Tab, a click) becomes the current item: keys act on what is focused.
  document.addEventListener("focusin", (event) => {
    if (asking && !inQuestion(event.target)) cancel(false);
    const item = event.target.closest(ITEMS);
    if (!item) return;
    const list = turns();
    current = list.indexOf(item);
    markCurrent(list);
  });

  function askingKey(event) {
    // Returns true when the open question took the key.
    const letter = asking.decision === "accept" ? "a" : "r";
    if (event.key === "Escape") {
      event.preventDefault();
      cancel(true);
      return true;
    }
    if (event.key === letter || (event.key === "Enter" && !event.target.matches("button"))) {
      event.preventDefault();
      decide();
      return true;
    }
    // Tab and Shift+Tab move within the question, Space ticks a reason, Enter presses a button.
    if (["Tab", "Shift", " ", "Enter"].includes(event.key)) return true;
    cancel(true); // any other key: back to the dialogue, where it does what it always does
    return false;
  }

  function rankKey(event) {
    const item = currentTurn();
    if (event.key === "j" || event.key === "ArrowDown") {
      event.preventDefault();
      focusTurn(current + 1);
    } else if (event.key === "k" || event.key === "ArrowUp") {
      event.preventDefault();
      focusTurn(current - 1);
    } else if (event.key === "x" && item) {
      event.preventDefault();
      const box = item.querySelector("input[type=checkbox]");
      box.checked = !box.checked;
    } else if (/^[1-9]$/.test(event.key) && item) {
      // Ranks the focused reply; the focus stays, so "3 then x" acts on the same reply.
      const input = item.querySelector("input[type=number]");
      event.preventDefault();
      if (Number(event.key) <= Number(input.max)) input.value = event.key;
    } else if (event.key === "Enter" && !event.target.matches("button, summary, a")) {
      event.preventDefault();
      rankForm.requestSubmit();
    }
  }

  document.addEventListener("keydown", (event) => {
    const modified = event.ctrlKey || event.metaKey || event.altKey;
    if (asking && !modified && askingKey(event)) return;
    const target = event.target;
    const typing = target.matches("textarea, select, input:not([type=checkbox])");
    if (typing) {
      if (event.key === "Escape") {
        const details = target.closest("details.edit");
        if (details) details.open = false;
        target.blur();
        const turn = target.closest(".turn, .candidate");
        if (turn) turn.focus();
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        // The decision form has no submit without a decision: a and r ask for one.
        if (target.form.id === "decision-form") return;
        event.preventDefault();
        // A form swapped in a moment ago may not be wired to htmx yet: wire it, then submit.
        if (window.htmx && target.form.hasAttribute("hx-post")) window.htmx.process(target.form);
        target.form.requestSubmit();
      }
      return;
    }
    if (modified) return;
    if (rankForm) {
      rankKey(event);
      return;
    }
    const click = (id) => {
      const el = document.getElementById(id);
      if (el) {
        event.preventDefault();
        el.click();
      }
    };
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
      case "a": event.preventDefault(); ask("accept"); break;
      case "r": event.preventDefault(); ask("reject"); break;
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
      case "Enter":
        // On a checkbox the browser would submit the form with its first button, Accept: in the
        // reasons Enter asks to reject, on a flag it does nothing.
        if (target.matches("#decision-form input[type=checkbox]")) {
          event.preventDefault();
          if (target.closest("#reject-reasons")) ask("reject");
        }
        break;
      default:
        if (/^[1-9]$/.test(event.key)) {
          event.preventDefault();
          setStrategyByNumber(Number(event.key));
        }
    }
  });

  // After my own edit the dialogue moves to a new version: later edits are based on it.
  document.body.addEventListener("dialogueVersion", (event) => {
    document.querySelectorAll("input.version").forEach((input) => { input.value = event.detail.value; });
  });

  // Keep the current turn after htmx swaps it (not while a question waits for its answer).
  document.body.addEventListener("htmx:afterSwap", () => { if (!asking) focusTurn(current); });

  const help = document.getElementById("help-button");
  if (help) help.addEventListener("click", () => document.getElementById("shortcuts").showModal());
  if (turns().length) focusTurn(0);
})();
