// Overlay toggles from /api/factor/catalog: one switch per factor and one per sub-feature.

import { api } from "./api.js";

export class OverlayToggles {
  /** @param {HTMLElement} root  @param {() => void} onChange */
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;
    this.state = new Map(); // sub-feature key -> visible
  }

  visible(feature) {
    return this.state.get(feature) ?? false;
  }

  async load() {
    let catalog;
    try {
      catalog = await api.catalog();
    } catch (e) {
      this.root.textContent = `overlays unavailable: ${e.message}`;
      return;
    }
    const groups = [];
    for (const factor of catalog.factors) {
      const box = document.createElement("fieldset");
      const legend = document.createElement("legend");
      const all = checkbox(`factor-${factor.key}`, factor.label, factor.default_visible);
      legend.append(all.label);
      box.append(legend);
      const subs = factor.sub_features.map((sub) => {
        const c = checkbox(`feature-${sub.key}`, sub.label, factor.default_visible && sub.default_visible);
        this.state.set(sub.key, c.input.checked);
        c.input.addEventListener("change", () => {
          this.state.set(sub.key, c.input.checked);
          all.input.checked = subs.some((s) => s.input.checked);
          this.onChange();
        });
        box.append(c.label);
        return c;
      });
      all.input.addEventListener("change", () => {
        for (const [i, sub] of factor.sub_features.entries()) {
          subs[i].input.checked = all.input.checked && (sub.default_visible || !factor.default_visible);
          this.state.set(sub.key, subs[i].input.checked);
        }
        this.onChange();
      });
      groups.push(box);
    }
    this.root.replaceChildren(...groups);
    this.onChange();
  }
}

function checkbox(id, text, checked) {
  const input = document.createElement("input");
  input.type = "checkbox";
  input.id = id;
  input.checked = checked;
  const label = document.createElement("label");
  label.append(input, ` ${text}`);
  return { input, label };
}
