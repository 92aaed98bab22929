// Sweeps: one spec trained several ways (a grid or a random search over spec fields), the runs compared on one
// metric. /sweeps lists them; /sweeps/<id> draws the leaderboard and every child's learning curves overlaid.
import { api } from "./api.js";
import { lineChart, seriesColor } from "./charts.js";
import { duration, fixed, h, percent, progressBar, shortId, when } from "./dom.js";
import { ALIAS_PATTERN, badge, ENDED, jobLink, main, poll, say, showError, table, tryLink } from "./page.js";

const METRIC_NAMES = { val_macro_f1: "val macro-F1", val_accuracy: "val accuracy", val_loss: "val loss" };
const metricName = (metric) => METRIC_NAMES[metric] || metric;
// A child is done once it can change no more; `pruned` ends a child early but it keeps its metrics.
const DONE = ["succeeded", "failed", "cancelled", "pruned"];

const value = (v) => (typeof v === "string" ? v : JSON.stringify(v));
const paramText = (child) => Object.entries(child.params).map(([k, v]) => `${k}=${value(v)}`).join("  ");
const childLabel = (child) => `#${child.index} ${paramText(child)}`;
const swatch = (child) => h("span", { class: "swatch", style: { background: seriesColor(child.index) } });

/** Ranked children first, best first, then the ones without a metric yet, in creation order. */
const ranked = (children) =>
  [...children].sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity) || a.index - b.index);

function countsText(counts) {
  const parts = Object.entries(counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`);
  return parts.join(" · ") || "none";
}

// From the children, not `counts`: counts has one entry per distinct job, and duplicate children share a job.
function doneShare(sweep) {
  const done = sweep.children.filter((child) => DONE.includes(child.status)).length;
  return sweep.children.length ? (100 * done) / sweep.children.length : 0;
}

function bestText(sweep) {
  const best = sweep.best;
  if (!best) return "–";
  return [fixed(best[sweep.metric]), " ", h("span", { class: "muted" }, childLabel(best))];
}

// ---------------------------------------------------------------------------------------------------------
// sweeps list

function sweepRow(sweep) {
  return h("tr", { "data-sweep": sweep.id },
    h("td", {}, h("a", { href: `/sweeps/${sweep.id}` }, sweep.name || h("span", { class: "mono" }, shortId(sweep.id)))),
    h("td", {}, badge(sweep.status)),
    h("td", {}, sweep.search),
    h("td", {}, progressBar(doneShare(sweep)), " ", h("span", { class: "muted" }, countsText(sweep.counts))),
    h("td", {}, metricName(sweep.metric)),
    h("td", { class: "num best" }, bestText(sweep)),
    h("td", { class: "muted" }, when(sweep.created_at)));
}

export async function sweepsPage() {
  const body = h("tbody");
  const count = h("span", { class: "muted" });
  main.replaceChildren(
    h("h1", {}, "Sweeps ", count),
    h("table", { id: "sweeps" },
      h("thead", {}, h("tr", {}, ["sweep", "status", "search", "children", "metric", "best", "created"]
        .map((x) => h("th", {}, x)))),
      body));
  await poll(async () => {
    const page = await api("/v1/sweeps?limit=50");
    count.textContent = `(${page.total})`;
    body.replaceChildren(...page.items.map(sweepRow));
    if (!page.items.length) {
      body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No sweeps yet. Compare optimizers: ",
                                h("code", {}, "textclf sweep create <dataset id> --grid optimizer.name=sgd,adam "
                                              + "--set epochs=5 --watch"))));
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// one sweep: facts, actions, leaderboard, overlaid learning curves

function sweepFacts(sweep) {
  const pruning = sweep.pruning;
  const facts = [
    ["status", badge(sweep.status)],
    ["search", sweep.search === "random" ? `random, ${sweep.samples} samples` : "grid"],
    ["children", `${sweep.children.length}: ${countsText(sweep.counts)}`],
    ["progress", h("span", {}, progressBar(doneShare(sweep)), ` ${fixed(doneShare(sweep), 0)} % done`)],
    ["metric", `${metricName(sweep.metric)} (${sweep.higher_is_better ? "higher" : "lower"} is better)`],
    ["max parallel", sweep.max_parallel],
    ["pruning", pruning ? `at epochs ${pruning.milestones.join(", ")}, keeps ${percent(pruning.keep_fraction, 0)}`
      : "off"],
    ["dataset", h("span", { class: "mono" }, sweep.dataset_id)],
    ["created", when(sweep.created_at)],
    ["finished", when(sweep.finished_at)],
    ["wall time", duration(sweep.wall_seconds)],
    ["best", sweep.best ? [bestText(sweep), " ", tryLink(sweep.best.model_id)] : "–"],
  ];
  return h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function note(child) {
  if (child.error) return h("span", { class: "error-text" }, child.error.message);
  if (child.duplicate_of !== null && child.duplicate_of !== undefined) {
    return h("span", { class: "muted" }, `same spec as #${child.duplicate_of}: trained once`);
  }
  if (child.reused) return h("span", { class: "muted" }, "an identical earlier job's result");
  return "";
}

function leaderboardRow(child, sweep) {
  const p = child.progress || {};
  const epochs = p.total_epochs ? `${child.epochs_run}/${p.total_epochs}` : child.epochs_run;
  const num = (v) => h("td", { class: "num" }, v);
  return h("tr", { "data-child": child.index, "data-status": child.status, class: child.rank === 1 ? "best" : null },
    num(child.rank ?? "–"),
    h("td", { class: "child" }, swatch(child), ` #${child.index}`),
    h("td", {}, Object.entries(child.params).map(([k, v]) => h("span", { class: "chip" }, `${k}=${value(v)}`))),
    h("td", {}, badge(child.status),
      child.status === "running" ? [" ", progressBar(p.percent)] : null),
    num(child.best_epoch ?? "–"),
    num(epochs),
    ["val_accuracy", "val_macro_f1", "val_loss"].map((key) =>
      h("td", { class: key === sweep.metric ? "num metric" : "num" }, fixed(child[key]))),
    num(fixed(child.test_accuracy)),
    num(fixed(child.test_macro_f1)),
    num(duration(child.train_seconds)),
    h("td", {}, tryLink(child.model_id)),
    h("td", {}, child.job_id ? jobLink(child.job_id) : "–"),
    h("td", { class: "text" }, note(child)));
}

function leaderboard(sweep) {
  const headers = ["rank", "child", "params", "status", "best epoch", "epochs", "val acc", "val macro-F1",
                   "val loss", "test acc", "test macro-F1", "train time", "model", "job", ""];
  const view = table(headers, ranked(sweep.children).map((child) => leaderboardRow(child, sweep)),
                     { id: "leaderboard" });
  // The column the sweep ranks by stands out.
  const metricColumn = { val_accuracy: 6, val_macro_f1: 7, val_loss: 8 }[sweep.metric];
  if (metricColumn) view.querySelectorAll("th")[metricColumn].classList.add("metric");
  return view;
}

/** Loss (train dashed, validation solid) and the sweep's metric per epoch, the network's: one colour per child.
 * A ring marks each finished child's served model (the blend with TF-IDF when on) at its best epoch: the figure
 * the leaderboard shows, which the network's line need not pass through. */
function sweepCurves(sweep) {
  const points = (child, key) => (child.history || []).map((e) => [e.epoch, e[key]]);
  const colour = (child) => seriesColor(child.index);
  const loss = lineChart({
    title: "Loss per epoch, the network's (dashed: train, solid: validation)", legend: false, wide: true,
    series: sweep.children.flatMap((child) => [
      { name: `${childLabel(child)}: train`, color: colour(child), dashed: true, points: points(child, "train_loss") },
      { name: `${childLabel(child)}: validation`, color: colour(child), points: points(child, "val_loss") }]) });
  const isLoss = sweep.metric === "val_loss";
  const metric = lineChart({
    title: `${metricName(sweep.metric)} per epoch, the network's (rings: each served model)`, legend: false,
    wide: true, clamp: isLoss ? null : [0, 1], format: isLoss ? undefined : (v) => v.toFixed(2),
    series: sweep.children.map((child) => ({ name: childLabel(child), color: colour(child),
                                             points: points(child, sweep.metric) })),
    marks: sweep.children.filter((child) => child.model_id).map((child) => ({
      name: `${childLabel(child)}: served model`, color: colour(child), epoch: child.best_epoch,
      value: child[sweep.metric] })) });
  loss.dataset.chart = "loss";
  metric.dataset.chart = "metric";
  const legend = h("div", { class: "legend sweep-legend", id: "sweep-legend" }, sweep.children.map((child) =>
    h("span", { class: "key", "data-child": child.index, style: { color: colour(child) } },
      h("span", { class: "legend-text" }, childLabel(child)))));
  return [loss, metric, legend];
}

export async function sweepPage(sweepId) {
  const title = h("h1", {}, "Sweep ", h("span", { class: "mono" }, sweepId));
  const facts = h("div");
  const board = h("div");
  const charts = h("div", { class: "charts", id: "sweep-curves" });
  const cancel = h("button", { type: "button", id: "sweep-cancel", hidden: true, onclick: async () => {
    try {
      await api(`/v1/sweeps/${sweepId}/cancel`, { method: "POST" });
      say("Cancelling every child that has not finished.", "ok");
    } catch (error) { showError(error); }
  } }, "Cancel sweep");
  const alias = h("input", { id: "promote-alias", placeholder: "prod", required: true, pattern: ALIAS_PATTERN });
  const promote = h("form", { id: "promote-form", class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const reply = await api(`/v1/sweeps/${sweepId}/promote`, { method: "POST", body: { alias: alias.value } });
      say(`Alias ${reply.alias} now points at model ${shortId(reply.model_id)} (child #${reply.child}).`, "ok");
    } catch (error) { showError(error); }
  } },
  h("label", {}, "Point alias ", alias, " at the best child's model"), h("button", { type: "submit" }, "Promote"));
  const spec = h("pre", { class: "spec" });
  main.replaceChildren(title, h("div", { class: "inline" }, promote, cancel), facts,
                       h("h2", {}, "Leaderboard"), board, h("h2", {}, "Learning curves"), charts,
                       h("details", {}, h("summary", {}, "Search (base spec, grid or space)"), spec));
  let drawn = "";
  await poll(async () => {
    const sweep = await api(`/v1/sweeps/${sweepId}`);
    if (sweep.name) title.replaceChildren("Sweep ", sweep.name, " ", h("span", { class: "mono muted" }, sweepId));
    facts.replaceChildren(sweepFacts(sweep));
    board.replaceChildren(leaderboard(sweep));
    cancel.hidden = ENDED.has(sweep.status);
    spec.textContent = JSON.stringify({ base: sweep.base, grid: sweep.grid, space: sweep.space,
                                        pruning: sweep.pruning }, null, 2);
    // Redraw only when a child finished an epoch or got its model (whose ring the metric chart draws).
    const epochs = sweep.children.map((child) => `${(child.history || []).length}${child.model_id ? "+" : ""}`).join();
    if (epochs !== drawn) {
      drawn = epochs;
      charts.replaceChildren(...sweepCurves(sweep));
    }
    return !ENDED.has(sweep.status);
  });
}
