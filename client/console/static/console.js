// Live progress of a running task: the page works without this (its Refresh link reloads it).
document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector("[data-task-status]");
  if (!box) return;
  const bar = box.querySelector("progress");
  const text = box.querySelector("[data-status-text]");
  const poll = async () => {
    const response = await fetch(box.dataset.taskStatus, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const status = await response.json();
    text.textContent = status.text;
    if (status.expected > 0) { bar.max = status.expected; bar.value = status.replies; }
    if (status.finished) { window.location.reload(); return; }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
});
