// What a reader would see wrong on one page of the built book, measured in the rendered DOM.
// Evaluated by tests/test_browser.py in headless Chromium after the page loaded; resolves to
// {problems: [{kind, where, code, setup, detail}], counts: {...}}: `where` names the cell (its number on the
// page and its first line of code, also in `code`) or the section; `setup` is true in the parameters cells
// and the first code cell after them. Kinds: "math", "width", "traceback", "bare", "figure" (a figure with no
// number and caption), "clipped" (a display equation or a code line shown to the reader that runs past the
// column) and "runbox" (a chapter page, one with code cells, without its "Re-run this chapter" box).
(async () => {
  const problems = [];
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const cells = [...article.querySelectorAll("div.cell")];

  const firstLine = (el) => {
    const cell = el.closest("div.cell");
    const code = cell && cell.querySelector(".cell_input pre");
    return code ? (code.innerText.split("\n").find((l) => l.trim()) || "").trim() : "";
  };
  const where = (el) => {
    const cell = el.closest("div.cell");
    if (cell) return `cell ${cells.indexOf(cell) + 1} (${firstLine(el).slice(0, 70)})`;
    let node = el;
    while (node && node !== article) {  // prose: the section it is in
      const heading = node.closest("section") && node.closest("section").querySelector("h1, h2, h3");
      if (heading) return `section "${heading.innerText.replace(/[#¶]/g, "").trim().slice(0, 60)}"`;
      node = node.parentElement;
    }
    return "page";
  };
  // the parameters cells and the first code cell after them belong to the book's set-up, not to the chapter
  const setUp = cells.findIndex((c) => c.classList.contains("tag_injected-parameters")) + 1;
  const add = (kind, el, detail) => {
    const cell = el.closest("div.cell");
    problems.push({kind, where: where(el), code: firstLine(el), setup: !!cell && cells.indexOf(cell) <= setUp,
                   detail});
  };

  // wait for figures and for MathJax's first typesetting pass
  await Promise.all([...document.images].map((img) => img.complete ? null
    : new Promise((done) => { img.onload = img.onerror = done; })));
  const maths = [...article.querySelectorAll(".math")];
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (err) { add("math", article, `MathJax failed: ${err}`); }
  } else if (maths.length) {
    add("math", article, `${maths.length} formulas but MathJax did not load`);
  }

  // math: every formula typeset, and no TeX left in the text a reader sees
  for (const el of maths) {
    if (!el.querySelector("mjx-container") && !el.closest("mjx-container")) {
      add("math", el, `formula not typeset: ${el.textContent.trim().slice(0, 60)}`);
    }
  }
  const rawTex = /\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\$[^$\s][^$\n]{0,80}?[\\^_{}][^$\n]{0,80}?\$/;
  const skip = "script, style, mjx-container, .math, .cell_input, .MathJax_Preview";
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip)) continue;
    if (parent.closest("pre, code") && !parent.closest(".cell_output")) continue;  // code shown as code
    const match = node.textContent.match(rawTex);
    if (match) {
      const at = Math.max(0, match.index - 20);
      add("math", parent, `raw TeX in the text: "…${node.textContent.slice(at, match.index + 40).trim()}…"`);
    }
  }

  // width: nothing in an output is wider than the column it sits in
  for (const out of article.querySelectorAll("div.cell_output")) {
    const column = out.clientWidth;
    const left = out.getBoundingClientRect().left;
    const reported = [];
    for (const img of out.querySelectorAll("img")) {
      if (img.naturalWidth > column + 2) {
        add("width", img, `figure ${img.naturalWidth} px wide in a ${column} px column (shown shrunk to `
          + `${Math.round(img.getBoundingClientRect().width)} px)`);
        reported.push(img);
      }
    }
    for (const el of out.querySelectorAll("*")) {
      if (reported.some((r) => r.contains(el) || el.contains(r))) continue;
      if (el.parentElement && el.parentElement.closest("mjx-container")) continue;  // MathJax's own layout
      if (el.matches("a.headerlink")) continue;  // a caption's "#" link, shown on hover beside its last line
      const rect = el.getBoundingClientRect();
      const scrolls = getComputedStyle(el).overflowX !== "visible" && el.clientWidth > 0
        && el.scrollWidth - el.clientWidth > 8;  // a few pixels are rounding (inline math clips its margin)
      if (rect.right - left > column + 2 || scrolls) {
        const wide = Math.round(Math.max(rect.right - left, el.scrollWidth));
        const what = el.tagName === "PRE" ? "text" : el.tagName === "TABLE" || el.querySelector("table") ? "table"
          : el.tagName.toLowerCase();
        add("width", el, `${what} ${wide} px wide in a ${column} px column (scrolls sideways)`);
        reported.push(el);
      }
    }
  }

  // figures: every image in an output is a numbered figure with a caption (cmpt.show_figure)
  for (const img of article.querySelectorAll("div.cell_output img")) {
    const figure = img.closest("figure");
    const number = figure && figure.querySelector("figcaption .caption-number");
    const text = figure && figure.querySelector("figcaption .caption-text");
    if (!number || !text || !text.innerText.trim()) {
      add("figure", img, "a figure without a number and caption (show it with cmpt.show_figure)");
    }
  }

  // clipped: display maths and the code lines a reader sees (not folded away) stay inside the text column
  const right = article.getBoundingClientRect().right;
  const shown = (el) => el.getClientRects().length > 0 && !el.closest("details:not([open])");
  for (const el of article.querySelectorAll('mjx-container[display="true"], div.highlight pre')) {
    if (!shown(el) || el.closest("div.cell_output")) continue;  // outputs: the width check above
    const box = el.closest("mjx-container") ? el : el.parentElement;
    const past = Math.round(el.getBoundingClientRect().left + el.scrollWidth - right);
    if (past > 2 || box.scrollWidth - box.clientWidth > 8) {
      const what = el.tagName === "PRE" ? "code line" : "display equation";
      add("clipped", el, `${what} runs ${Math.max(past, box.scrollWidth - box.clientWidth)} px past the column`);
    }
  }

  // the run box: every chapter page (one with code cells) tells the reader how to re-run it
  if (cells.length && ![...article.querySelectorAll(".admonition-title")].some(
      (t) => t.innerText.trim() === "Re-run this chapter")) {
    add("runbox", article, 'no "Re-run this chapter" box');
  }

  // tracebacks, and outputs that are one bare number (a value left as a cell's last expression)
  const number = String.raw`[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?`;
  const scalar = String.raw`(?:(?:np|numpy)\.\w+\(${number}\)|tensor\(${number}\)|${number}|True|False)`;
  const bare = new RegExp(String.raw`^[\[(]?\s*${scalar}(?:\s*,\s*${scalar})*\s*,?[\])]?$`);
  for (const out of article.querySelectorAll("div.cell_output")) {
    for (const el of out.querySelectorAll(".output.traceback, .output.error")) {
      add("traceback", el, `error output: ${el.innerText.trim().split("\n").slice(-1)[0].slice(0, 100)}`);
    }
    const text = out.innerText;
    if (/Traceback \(most recent call last\)/.test(text) && !out.querySelector(".output.traceback, .output.error")) {
      add("traceback", out, "a traceback printed in the output");
    }
    for (const el of out.querySelectorAll(".output, :scope > p, :scope > div:not(.output)")) {
      const shown = el.innerText.trim();
      if (shown && bare.test(shown)) add("bare", el, `output is just "${shown.slice(0, 40)}"`);
    }
  }
  return {problems, counts: {cells: cells.length, maths: maths.length, images: document.images.length,
                             typeset: article.querySelectorAll("mjx-container").length}};
})()
