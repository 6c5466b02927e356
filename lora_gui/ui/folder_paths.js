// Keeps class-folder names when a folder is picked or dropped in the browser.
//
// Gradio's file component uploads only each file's base name, so "cat/1.jpg"
// and "dog/1.jpg" would arrive as two "1.jpg". Before Gradio sees the files we
// write their relative paths, in upload order, into a hidden textbox
// (#lg-relpaths) that the upload handler reads beside the files.
(function () {
  const ZONE = "lg-folder", FIELD = "lg-relpaths";

  function setPaths(paths) {
    const box = document.querySelector(`#${FIELD} textarea, #${FIELD} input`);
    if (!box) return;
    const proto = box.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, "value").set.call(box, JSON.stringify(paths));
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // Folder picked with the file dialog: the browser fills webkitRelativePath.
  document.addEventListener("change", (ev) => {
    const input = ev.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.closest(`#${ZONE}`)) return;
    if (input.dataset.lgFed === "1") { input.dataset.lgFed = ""; return; }  // our own drop feed
    setPaths(Array.from(input.files || []).map((f) => f.webkitRelativePath || f.name));
  }, true);

  // Folder dropped: walk the entries ourselves, then hand Gradio's hidden input
  // the files in the same order as the paths we recorded.
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
    if (!input) return;
    const dt = new DataTransfer();
    found.forEach(([, file]) => dt.items.add(file));
    setPaths(found.map(([path]) => path));
    input.dataset.lgFed = "1";
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }, true);
})();
