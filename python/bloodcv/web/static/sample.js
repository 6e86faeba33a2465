// The sample page: while an image is queued or running, poll its status and reload once all are settled.
(function () {
  const pending = [...document.querySelectorAll("#images tr[data-image]")]
    .filter((row) => /queued|running/.test(row.querySelector(".status").textContent));
  if (!pending.length) return;
  const poll = async () => {
    let waiting = 0;
    for (const row of pending) {
      const response = await fetch(`/api/images/${row.dataset.image}`, { credentials: "same-origin" });
      if (!response.ok) continue;
      const image = await response.json();
      const cell = row.querySelector(".status");
      cell.textContent = image.status + (image.error ? `: ${image.error}` : "");
      cell.className = `status status-${image.status}`;
      if (image.status === "queued" || image.status === "running") waiting++;
    }
    if (waiting) setTimeout(poll, 1000); else location.reload();
  };
  setTimeout(poll, 1000);
})();
