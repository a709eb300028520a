// The series picker: the whitelist, the exchange's top markets (with a timeframe), or a typed series id.

import { api } from "./api.js";
import { TIMEFRAME_NAMES, seriesIdProblem } from "./timeframe.js";

const TOP_REFRESH_MS = 60_000; // a ranking by 24 h volume moves slowly; the daemon caches it 10 s

export class SeriesPicker {
  /** @param {HTMLFormElement} root  @param {(seriesId: string) => void} onPick  @param {(msg: string) => void} onError */
  constructor(root, onPick, onError) {
    this.onPick = onPick;
    this.onError = onError;
    this.whitelist = root.querySelector("#whitelist");
    this.top = root.querySelector("#top-markets");
    this.timeframe = root.querySelector("#timeframe");
    this.typed = root.querySelector("#typed-series");
    for (const tf of TIMEFRAME_NAMES) this.timeframe.append(new Option(tf, tf, tf === "1m", tf === "1m"));
    this.whitelist.addEventListener("change", () => this.whitelist.value && this.onPick(this.whitelist.value));
    const pickTop = () => this.top.value && this.onPick(`${this.top.value}:${this.timeframe.value}`);
    this.top.addEventListener("change", pickTop);
    this.timeframe.addEventListener("change", pickTop);
    root.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = this.typed.value.trim();
      const problem = seriesIdProblem(id);
      if (problem) this.onError(`invalid series id: ${problem}`);
      else this.onPick(id);
    });
  }

  /** Fill the lists; resolves to the whitelist (the page's default choice is its first entry). */
  async load() {
    let ids = [];
    try {
      ids = (await api.whitelist()).series_ids;
    } catch (e) {
      this.onError(`whitelist unavailable: ${e.message}`);
    }
    this.whitelist.replaceChildren(new Option("whitelist…", ""), ...ids.map((id) => new Option(id, id)));
    this.loadTop(); // the exchange may be unreachable: it must not hold up the chart
    setInterval(() => this.loadTop(), TOP_REFRESH_MS);
    return ids;
  }

  async loadTop() {
    const options = [new Option("top markets…", "")];
    for (const market of ["spot", "futures"]) {
      try {
        const body = await api.topMarkets(market);
        for (const m of body.items) options.push(new Option(`${m.symbol} (${market})`, `${m.exchange}:${market}:${m.symbol}`));
      } catch {
        // upstream down (502) or no network: the list just stays shorter
      }
    }
    if (options.length === 1) options[0].textContent = "top markets unavailable";
    const chosen = this.top.value; // a refresh keeps what the user picked
    this.top.replaceChildren(...options);
    if (options.some((o) => o.value === chosen)) this.top.value = chosen;
  }

  /** Reflect the current series in the controls. */
  show(seriesId) {
    this.typed.value = seriesId;
    this.whitelist.value = [...this.whitelist.options].some((o) => o.value === seriesId) ? seriesId : "";
  }
}
