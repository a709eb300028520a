// The health panel: every active series from /api/market/health, polled every few seconds.

import { api } from "./api.js";

const POLL_MS = 3000;

export class HealthPanel {
  /** @param {HTMLElement} root  @param {(seriesId: string) => void} onPick */
  constructor(root, onPick) {
    this.root = root;
    this.onPick = onPick;
    this.rows = [];
    this.error = null;
  }

  start() {
    const tick = async () => {
      await this.refresh();
      setTimeout(tick, POLL_MS);
    };
    tick();
  }

  async refresh() {
    try {
      const body = await api.health();
      this.rows = body.series || [];
      this.error = null;
    } catch (e) {
      this.error = e.status === 404 ? "health API disabled (enable_kline_health)" : `health unavailable: ${e.message}`;
    }
    this.render();
  }

  render() {
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th></th><th>series</th><th>lag</th><th>backfill</th></tr></thead>";
    const tbody = document.createElement("tbody");
    for (const h of this.rows) {
      const tr = document.createElement("tr");
      tr.className = `health-${h.status}`;
      const pending = h.holes_pending_candles ? `; ${h.holes_pending_candles} in holes awaiting a retry` : "";
      tr.title = `${h.status}: ${h.status_reason}; ${h.missing_candles} missing${pending}`;
      tr.append(
        cell("", "dot"),
        cell(h.series_id, "sid"),
        cell(formatLag(h.lag_seconds)),
        cell(formatBackfill(h.backfill)),
      );
      tr.addEventListener("click", () => this.onPick(h.series_id));
      tbody.append(tr);
    }
    table.append(tbody);
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = this.error ?? (this.rows.length ? "" : "no active series");
    this.root.replaceChildren(table, note);
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function formatLag(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

function formatBackfill(b) {
  if (!b || b.state === "idle") return "idle";
  const pct = b.progress_pct === null || b.progress_pct === undefined ? "" : ` ${Math.round(b.progress_pct)}%`;
  return `${b.state}${pct}`;
}
