// Render the formulas of pymdownx.arithmatex (generic mode) with the vendored KaTeX, on
// every page load of mkdocs-material's instant navigation.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
  });
});
