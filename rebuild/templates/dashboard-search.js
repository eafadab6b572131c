// The search box: release ids, change ids, requirement ids and artifact digests, matched
// against window.REBUILD_SEARCH (search-index.js, written with the site). No network; every
// result is built with textContent, never as HTML.
(function () {
  "use strict";
  var form = document.querySelector("form.search");
  var input = document.getElementById("search");
  var list = document.getElementById("search-results");
  var rows = window.REBUILD_SEARCH || [];
  if (!form || !input || !list) { return; }
  var root = form.getAttribute("data-root") || "";
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  input.addEventListener("input", search);
  // A link may carry a query: index.html#search=REQ-12
  if (window.location.hash.indexOf("#search=") === 0) {
    input.value = decodeURIComponent(window.location.hash.slice(8));
    search();
  }
  function search() {
    var query = input.value.trim().toLowerCase();
    while (list.firstChild) { list.removeChild(list.firstChild); }
    if (query.length < 2) { return; }
    var shown = 0;
    for (var i = 0; i < rows.length && shown < 50; i++) {
      if (rows[i][0].toLowerCase().indexOf(query) === -1) { continue; }
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = root + rows[i][2];
      link.textContent = rows[i][0];
      var kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = rows[i][1];
      item.appendChild(link);
      item.appendChild(kind);
      list.appendChild(item);
      shown++;
    }
    if (!shown) {
      var none = document.createElement("li");
      none.textContent = "no match";
      list.appendChild(none);
    }
  }
}());
