// Reading aids for the results pages (Material's document$ fires on every page load).
document$.subscribe(function () {
  // A plot opens at full size on click: legends and grid labels are small at page width.
  document.querySelectorAll(".md-content img").forEach(function (img) {
    if (img.closest("a")) return;
    var link = document.createElement("a");
    link.href = img.src;
    link.title = "Open the full-size image";
    link.className = "adrpo-zoom";
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  });
  // "0.814 ± 0.013" stays on one line; a table too wide for the page scrolls sideways instead.
  document.querySelectorAll(".md-typeset td").forEach(function (cell) {
    if (/^[−+\-]?[\d.]+ ± [\d.]+/.test(cell.textContent.trim())) cell.classList.add("adrpo-number");
  });
});
