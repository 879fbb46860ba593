/* fvis microscope: keys to move between pages, and sorting a layer's thumbnails.
 * A classic script with no fetch and no modules, so that the pages work from file://. */
(function () {
  "use strict";

  // A key -> the <link rel> of the page it opens (each page names its own neighbours).
  var KEYS = { ArrowRight: "next", j: "next", ArrowLeft: "prev", k: "prev", u: "up" };

  function typing(target) {
    return target && (target.isContentEditable ||
      /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName || ""));
  }

  function go(event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (event.defaultPrevented || event.isComposing || typing(event.target)) return;
    var rel = KEYS[event.key];
    var link = rel && document.querySelector('link[rel="' + rel + '"]');
    if (!link) return;
    event.preventDefault();
    window.location.href = link.href;
  }

  // Sorting: by channel, or by the objective reached (channels without one last).
  function objective(item) {
    var value = parseFloat(item.getAttribute("data-objective"));
    return isNaN(value) ? null : value;
  }

  function compare(order) {
    return function (a, b) {
      var byChannel = Number(a.getAttribute("data-channel")) - Number(b.getAttribute("data-channel"));
      if (order === "channel") return byChannel;
      var x = objective(a), y = objective(b);
      if (x === y) return byChannel;
      if (x === null) return 1;
      if (y === null) return -1;
      return order === "objective-low" ? x - y : y - x;
    };
  }

  function sort(list, order) {
    var items = Array.prototype.slice.call(list.querySelectorAll("li[data-channel]"));
    items.sort(compare(order));
    items.forEach(function (item) { list.appendChild(item); });
  }

  function setUpSorting() {
    var select = document.getElementById("sort");
    var list = select && document.getElementById(select.getAttribute("data-sorts"));
    if (!list) return;
    var wanted = /^#sort=([\w-]+)$/.exec(window.location.hash);
    var known = Array.prototype.some.call(select.options, function (option) {
      return wanted && option.value === wanted[1];
    });
    if (known) {
      select.value = wanted[1];
      sort(list, wanted[1]);
    }
    select.addEventListener("change", function () {
      sort(list, select.value);
      // Kept in the address, so that Back from a channel returns to the same order.
      window.location.replace("#sort=" + select.value);
    });
  }

  document.addEventListener("keydown", go);
  setUpSorting();
})();
