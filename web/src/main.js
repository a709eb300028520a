// klined's chart page: wires the picker, the chart, the /ws/market feed, the overlay toggles and the
// health panel, and exposes a read-only test hook (window.klined).

import "./style.css";
import { CandleChart } from "./chart.js";
import { SeriesController } from "./controller.js";
import { MarketFeed, marketUrl } from "./feed.js";
import { HealthPanel } from "./health.js";
import { SeriesPicker } from "./picker.js";
import { seriesIdProblem } from "./timeframe.js";
import { OverlayToggles } from "./toggles.js";

const $ = (sel) => document.querySelector(sel);

function showError(message) {
  const el = $("#error");
  el.textContent = message ?? "";
  el.hidden = !message;
}

function showStatus({ state, detail, retryAt }) {
  const el = $("#conn");
  el.className = `conn conn-${state}`;
  const wait = retryAt ? ` (retry in ${Math.max(0, Math.round((retryAt - Date.now()) / 100) / 10)} s)` : "";
  el.textContent = state === "disconnected" ? `disconnected: ${detail}${wait}` : state;
}

const chart = new CandleChart($("#chart"));
let controller = null;
const feed = new MarketFeed(marketUrl(), {
  onOpen: () => controller.onOpen(),
  onFrame: (f) => controller.onFrame(f),
  onStatus: showStatus,
});
const toggles = new OverlayToggles($("#overlays"), () => controller.drawOverlays());
controller = new SeriesController(chart, feed, toggles, showError);

function pick(seriesId) {
  const problem = seriesIdProblem(seriesId);
  if (problem) {
    showError(`invalid series id ${seriesId}: ${problem}`);
    return;
  }
  if (decodeURIComponent(location.hash.slice(1)) !== seriesId) history.replaceState(null, "", `#${seriesId}`);
  picker.show(seriesId);
  $("#title").textContent = seriesId;
  controller.select(seriesId);
}

const picker = new SeriesPicker($("#picker"), pick, showError);
const health = new HealthPanel($("#health"), pick);

window.klined = Object.freeze({
  state: () => controller.state(),
  times: () => (controller.book ? [...controller.book.times] : []),
  select: (seriesId) => pick(seriesId),
});

async function boot() {
  feed.start();
  health.start();
  toggles.load();
  const whitelist = await picker.load();
  const fromHash = decodeURIComponent(location.hash.slice(1));
  const first = fromHash || whitelist[0];
  if (first) pick(first);
  else showError("no series yet: pick a top market or type a series id");
}

window.addEventListener("hashchange", () => {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id && id !== controller.seriesId) pick(id);
});

boot();
