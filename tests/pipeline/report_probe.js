<script>
// Test probe appended to a copy of the Snakemake report (tests/pipeline/test_workflow.py): walks
// the report like a reader (menu entries -> result row -> eye button) and records the PNG images
// the browser rendered, with their decoded sizes, as JSON in a pre element (id scfm-probe). PLAN is
// replaced by a JSON list of [[menu entries...], text of the result row].
(function () {
  const plan = PLAN;
  const found = [];
  function byText(text) {
    const hits = [...document.querySelectorAll("a, span, td")].filter(
      (e) => e.textContent.trim() === text);
    return hits.length ? hits[hits.length - 1] : null;
  }
  function step(i) {
    if (i >= plan.length) return finish();
    const [clicks, label] = plan[i];
    const home = document.querySelector("nav ol li a");  // breadcrumb: back to the menu
    if (home) home.click();
    setTimeout(() => open(i, clicks, 0, label), 1000);
  }
  function open(i, clicks, k, label) {
    if (k < clicks.length) {
      const link = byText(clicks[k]);
      if (!link) { found.push({clicks, label, error: "no menu entry " + clicks[k]}); return step(i + 1); }
      (link.closest("a") || link).click();
      return setTimeout(() => open(i, clicks, k + 1, label), 1000);
    }
    {
      const row = [...document.querySelectorAll("tr")].find((r) => r.textContent.includes(label));
      const eye = row && row.querySelector("a[iconname=eye]");
      if (!eye) { found.push({clicks, label, error: "no result row"}); return step(i + 1); }
      eye.click();
      setTimeout(() => {
        const imgs = [...document.querySelectorAll("img")].filter((im) => im.src.startsWith("data:image/png"));
        found.push({clicks, label, images: imgs.map((im) => [im.naturalWidth, im.naturalHeight])});
        step(i + 1);
      }, 1500);
    }
  }
  function finish() {
    const out = document.createElement("pre");
    out.id = "scfm-probe";
    out.textContent = JSON.stringify(found);
    document.body.appendChild(out);
  }
  window.addEventListener("load", () => setTimeout(() => step(0), 1500));
})();
</script>
