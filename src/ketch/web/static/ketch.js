// The overview's filter box: hides the machines whose name does not match.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("filter");
  if (!box) return;
  box.addEventListener("input", () => {
    const want = box.value.trim().toLowerCase();
    for (const row of document.querySelectorAll("#fleet tbody tr")) {
      const name = (row.dataset.machine || "").toLowerCase();
      row.classList.toggle("hidden", want !== "" && !name.includes(want));
    }
  });
});
