// Bundle the page into ../daemon/webui/dist (index.html + assets/), which the daemon serves at "/".
import { copyFile, mkdir, rm } from "node:fs/promises";
import { build } from "esbuild";

const out = new URL("../daemon/webui/dist/", import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(new URL("assets/", out), { recursive: true });
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: ["es2022"],
  outdir: new URL("assets/", out).pathname,
  logLevel: "warning",
});
await copyFile("src/index.html", new URL("index.html", out));
console.log(`built ${out.pathname}`);
