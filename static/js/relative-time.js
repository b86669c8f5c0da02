// Relative times that stay current. The server renders
//   <time datetime="2026-12-01T10:00:00+00:00" data-relative>3 minutes ago</time>
// (Django's naturaltime/timesince, so the page reads well without JavaScript); this script
// rewrites the text of every such element every 15 seconds and after each htmx swap:
// "now", "12 seconds ago", "3 minutes ago", "2 hours ago", then a date for a day or older.
// The full date and time go into the title (on hover) unless the template set one.
// Tests and other scripts can call window.relativeTime.refresh() or .describe(date, now).
"use strict";

(() => {
  const MINUTE = 60;
  const HOUR = 60 * MINUTE;
  const DAY = 24 * HOUR;

  function ago(count, unit) {
    return `${count} ${unit}${count === 1 ? "" : "s"} ago`;
  }

  function describe(date, now = new Date()) {
    const seconds = Math.floor((now - date) / 1000);
    if (seconds < 10) return "now"; // also a time a little ahead (clocks differ)
    if (seconds < MINUTE) return ago(seconds, "second");
    if (seconds < HOUR) return ago(Math.floor(seconds / MINUTE), "minute");
    if (seconds < DAY) return ago(Math.floor(seconds / HOUR), "hour");
    return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function parse(iso) {
    // Django writes microseconds; Date.parse is only required to read milliseconds.
    return new Date(iso.replace(/(\.\d{3})\d+/, "$1"));
  }

  function refresh(root = document) {
    const now = new Date();
    for (const element of root.querySelectorAll("time[datetime][data-relative]")) {
      const date = parse(element.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      const text = describe(date, now);
      if (element.textContent !== text) element.textContent = text;
      if (!element.title) element.title = date.toLocaleString();
    }
  }

  window.relativeTime = { describe, refresh };
  refresh();
  setInterval(refresh, 15_000);
  document.body.addEventListener("htmx:afterSwap", () => refresh());
})();
