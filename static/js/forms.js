// Behaviour templates ask for with data- attributes, since the Content-Security-Policy refuses
// inline handlers (onclick=, onsubmit=). Listeners sit on the document, so content htmx swaps in
// works too.
//   <form data-confirm="Question?">         a plain (non-htmx) form asks before it submits;
//                                           htmx forms use hx-confirm instead
//   <button data-toggle-checkboxes="NAME">  flips every checkbox named NAME
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-toggle-checkboxes]");
  if (!button) return;
  const name = CSS.escape(button.dataset.toggleCheckboxes);
  for (const box of document.querySelectorAll(`input[type=checkbox][name="${name}"]`)) {
    box.checked = !box.checked;
  }
});
