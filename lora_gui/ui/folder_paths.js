// Folder upload helper for the Data tab's drop zone (#lg-folder).
//
// 1. Keeps class-folder names. Gradio's file component uploads only each file's
//    base name, so "cat/1.jpg" and "dog/1.jpg" would arrive as two "1.jpg". Before
//    Gradio sees the files we write their relative paths, in upload order, into a
//    hidden textbox (#lg-relpaths) that the upload handler reads beside the files.
// 2. Leaves non-images in the browser (notes, .DS_Store, videos): they would only be
//    uploaded to be skipped. Gradio's own file_types filter shows a red toast per file,
//    so we filter here and send the count per extension for the report instead.
// 3. Says what is happening in words: "Drop a folder of class folders", the upload's
//    percentage, then "Folder 'pets' · 2,978 images" instead of a list of file names.
(function () {
  const ZONE = "lg-folder", FIELD = "lg-relpaths", STATUS = "lg-folder-status";
  // what the server reads (data/images.py), real images it explains it cannot read, and label CSVs
  const KEEP = /\.(jpe?g|png|webp|bmp|gif|tiff?|heic|heif|avif|jxl|jp2|psd|svg|ico|ppm|pgm|pbm|dng|cr2|nef|arw|raw|csv)$/i;
  const nf = new Intl.NumberFormat("en");
  let meta = null;

  const style = document.createElement("style");
  style.textContent = `#${ZONE} .file-preview-holder, #${ZONE} .file-preview, #${ZONE} .progress-bar-wrap,
    #${ZONE} .uploading, #${ZONE} .file-name {display: none !important;}
    #${STATUS} {margin: 6px 2px 0; font-weight: 600;}`;
  document.head.appendChild(style);

  function ext(name) {
    const m = /\.[^./]+$/.exec(name);
    return m ? m[0].toLowerCase() : "no extension";
  }

  function split(pairs) {   // [[relpath, file]] -> kept pairs and skipped counts per extension
    const kept = [], skipped = {};
    for (const pair of pairs) {
      const base = pair[0].split("/").pop();
      if (!base.startsWith(".") && KEEP.test(base)) kept.push(pair);
      else skipped[ext(base)] = (skipped[ext(base)] || 0) + 1;
    }
    return [kept, skipped];
  }

  function status(text) {
    const zone = document.getElementById(ZONE);
    if (!zone) return;
    let el = document.getElementById(STATUS);
    if (!el) {
      el = document.createElement("div");
      el.id = STATUS;
      zone.insertAdjacentElement("afterend", el);
    }
    el.textContent = text;
  }

  function describe(prefix) {
    const left = Object.values(meta.skipped).reduce((a, b) => a + b, 0);
    return `${prefix}Folder '${meta.folder}' · ${nf.format(meta.paths.length)} images` +
      (left ? ` (${nf.format(left)} other files left out)` : "");
  }

  function watchProgress() {   // Gradio sets --upload-progress-width from its upload stream
    const started = Date.now(), summaryEl = () => document.querySelector("#lg-data-summary");
    const before = summaryEl() ? summaryEl().innerText : "";
    const timer = setInterval(() => {
      const raw = document.documentElement.style.getPropertyValue("--upload-progress-width");
      const pct = Math.min(100, Math.round(parseFloat(raw) || 0));
      const summary = summaryEl();
      const checked = summary && summary.innerText !== before && summary.innerText.includes(`'${meta.folder}'`);
      if (checked || Date.now() - started > 3600e3) {
        clearInterval(timer);
        status(describe(""));
      } else if (pct >= 100) {
        status(describe("Uploaded: ") + ". Checking the images…");
      } else {
        status(describe(`Uploading ${pct}% · `));
      }
    }, 250);
  }

  function feed(input, pairs) {
    const [kept, skipped] = split(pairs);
    const paths = kept.map(([path]) => path);
    meta = {paths, skipped, folder: (paths[0] || pairs[0]?.[0] || "folder").split("/")[0]};
    const box = document.querySelector(`#${FIELD} textarea, #${FIELD} input`);
    if (box) {
      const proto = box.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
      Object.getOwnPropertyDescriptor(proto, "value").set.call(box, JSON.stringify(meta));
      box.dispatchEvent(new Event("input", { bubbles: true }));
    }
    if (!kept.length) {
      status(`No images in '${meta.folder}': it needs one folder per class with pictures inside.`);
      return;
    }
    const dt = new DataTransfer();
    kept.forEach(([, file]) => dt.items.add(file));
    input.dataset.lgFed = "1";
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    watchProgress();
  }

  // Folder picked with the file dialog: the browser fills webkitRelativePath.
  document.addEventListener("change", (ev) => {
    const input = ev.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.closest(`#${ZONE}`)) return;
    if (input.dataset.lgFed === "1") { input.dataset.lgFed = ""; return; }  // our own feed: Gradio takes it
    ev.stopImmediatePropagation();
    ev.stopPropagation();
    feed(input, Array.from(input.files || []).map((f) => [f.webkitRelativePath || f.name, f]));
  }, true);

  // Folder dropped: walk the entries ourselves, then hand Gradio's hidden input the files.
  function readEntry(entry, prefix, out) {
    return new Promise((resolve) => {
      if (entry.isFile) {
        entry.file((file) => { out.push([prefix + file.name, file]); resolve(); }, () => resolve());
      } else if (entry.isDirectory) {
        const reader = entry.createReader(), children = [];
        const batch = () => reader.readEntries(async (items) => {
          if (!items.length) {
            children.sort((a, b) => a.name.localeCompare(b.name));
            for (const c of children) await readEntry(c, prefix + entry.name + "/", out);
            resolve();
          } else { children.push(...items); batch(); }
        }, () => resolve());
        batch();
      } else resolve();
    });
  }

  document.addEventListener("drop", async (ev) => {
    const zone = ev.target instanceof Element && ev.target.closest(`#${ZONE}`);
    const items = ev.dataTransfer && Array.from(ev.dataTransfer.items || []);
    if (!zone || !items || !items.length) return;
    const entries = items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!entries.some((e) => e.isDirectory)) return;  // plain files: let Gradio handle them
    ev.preventDefault();
    ev.stopPropagation();
    const found = [];
    for (const e of entries) await readEntry(e, "", found);
    const input = zone.querySelector("input[type=file]");
    if (input) feed(input, found);
  }, true);

  // Words on the drop zone: Gradio's generic "Drop File Here - or - Click to Upload".
  const WORDS = [["Drop File Here", "Drop a folder of class folders"], ["Click to Upload", "click to pick one"]];
  function reword() {
    const zone = document.getElementById(ZONE);
    if (!zone) return;
    const walker = document.createTreeWalker(zone, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const [from, to] of WORDS) {
        if (node.nodeValue.includes(from)) node.nodeValue = node.nodeValue.replace(from, to);
      }
    }
  }
  new MutationObserver(reword).observe(document.documentElement, { childList: true, subtree: true });
})();
