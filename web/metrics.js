// Reading llamaserve's /metrics (Prometheus text format) in the browser, for the dashboard:
// parse the samples, then turn two scrapes into rates and histogram quantiles, per model,
// the way Prometheus's rate() and histogram_quantile() would over the interval between them.

// [{name, labels: {k: v}, value}] for every sample line; comments and malformed lines are skipped.
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const sample = parseLine(line.trim());
    if (sample) samples.push(sample);
  }
  return samples;
}

function parseLine(line) {
  const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!name) return null;
  let i = name[0].length;
  const labels = {};
  if (line[i] === "{") {
    i += 1;
    for (;;) {
      while (line[i] === " " || line[i] === ",") i += 1;
      if (line[i] === "}") {
        i += 1;
        break;
      }
      const key = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
      if (!key || line[i + key[0].length] !== "=" || line[i + key[0].length + 1] !== '"') return null;
      i += key[0].length + 2;
      let value = "";
      for (; i < line.length && line[i] !== '"'; i += 1) {
        if (line[i] === "\\") {
          i += 1;
          value += line[i] === "n" ? "\n" : line[i];
        } else value += line[i];
      }
      if (i >= line.length) return null;
      i += 1;
      labels[key[0]] = value;
    }
  }
  const rest = line.slice(i).trim().split(/\s+/);
  const value = parseValue(rest[0]);
  return Number.isNaN(value) && rest[0] !== "NaN" ? null : { name: name[0], labels, value };
}

function parseValue(raw) {
  if (raw === "+Inf") return Infinity;
  if (raw === "-Inf") return -Infinity;
  return raw === undefined || raw === "" ? NaN : Number(raw);
}

// One scrape, indexed per model: sums[model][name] (every other label summed away) and
// buckets[model][name] = Map(le -> cumulative count) for histograms (`name` without `_bucket`).
export function indexByModel(samples) {
  const models = new Map();
  const of = (model) => {
    if (!models.has(model)) models.set(model, { sums: new Map(), buckets: new Map() });
    return models.get(model);
  };
  for (const s of samples) {
    const model = s.labels.model;
    if (model === undefined) continue;
    const m = of(model);
    if (s.name.endsWith("_bucket") && s.labels.le !== undefined) {
      const base = s.name.slice(0, -"_bucket".length);
      if (!m.buckets.has(base)) m.buckets.set(base, new Map());
      const le = parseValue(s.labels.le);
      const hist = m.buckets.get(base);
      hist.set(le, (hist.get(le) ?? 0) + s.value);
    } else {
      m.sums.set(s.name, (m.sums.get(s.name) ?? 0) + s.value);
    }
  }
  return models;
}

// The q-quantile of the observations between two cumulative bucket maps, interpolated
// linearly inside its bucket as histogram_quantile() does; null when nothing was observed.
export function histogramQuantile(q, before, after) {
  if (!after) return null;
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - (before?.get(le) ?? 0));
  const total = counts.at(-1);
  if (!(total > 0) || counts.some((c) => c < 0)) return null; // nothing new, or a counter reset
  const rank = q * total;
  for (let i = 0; i < bounds.length; i += 1) {
    if (counts[i] >= rank) {
      if (bounds[i] === Infinity) return bounds[i - 1] ?? null; // beyond the last bucket: its lower bound
      const lower = i === 0 ? 0 : bounds[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + ((bounds[i] - lower) * (rank - below)) / inBucket : bounds[i];
    }
  }
  return null;
}

const P = "llamaserve_";

// What the dashboard draws for one model from two scrapes `seconds` apart (prev may be null:
// the first scrape has gauges but no rates). Rates are null where the interval saw nothing.
export function derive(prev, cur, seconds) {
  const sum = (m, name) => m?.sums.get(P + name);
  const delta = (name) => {
    if (!prev || !(seconds > 0)) return null;
    const a = sum(prev, name);
    const b = sum(cur, name);
    return a === undefined || b === undefined || b < a ? null : b - a;
  };
  const quantile = (q, name) => (prev ? histogramQuantile(q, prev.buckets.get(P + name), cur.buckets.get(P + name)) : null);
  const generated = delta("generation_tokens_total");
  const prompt = delta("prompt_tokens_total");
  const hits = delta("prompt_cache_hit_tokens_total");
  const kv = sum(cur, "kv_cache_usage_ratio");
  return {
    tps: generated === null ? null : generated / seconds,
    ttft_p50: quantile(0.5, "time_to_first_token_seconds"),
    ttft_p95: quantile(0.95, "time_to_first_token_seconds"),
    itl_p50: quantile(0.5, "inter_token_latency_seconds"),
    itl_p95: quantile(0.95, "inter_token_latency_seconds"),
    waiting: sum(cur, "requests_waiting") ?? null,
    busy: sum(cur, "slots_busy") ?? null,
    slots: sum(cur, "slots") ?? null,
    kv: kv === undefined ? null : 100 * kv,
    hit: prompt && hits !== null ? (100 * hits) / prompt : null,
  };
}
