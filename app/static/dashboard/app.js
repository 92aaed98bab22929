// The dashboard: one small page per path, drawn from the JSON API. Plain ES modules, no build step.
import { api, getKey, setKey } from "./api.js";
import { heatmap, lineChart } from "./charts.js";
import { duration, fixed, h, percent, progressBar, shortId, when } from "./dom.js";
import { ALIAS_PATTERN, badge, ENDED, jobLink, main, poll, say, showError, table, tryLink } from "./page.js";
import { sweepPage, sweepsPage } from "./sweeps.js";

// A job's one accuracy figure is its served model's (metrics: the exported model, the blend with TF-IDF when on,
// at its best epoch), as on the job, models and sweep pages; history holds the network alone, per epoch.
const SERVED_ACC = "validation accuracy of the model served (its best epoch; the TF-IDF blend when on)";

// ---------------------------------------------------------------------------------------------------------
// jobs list

function jobRow(job) {
  const p = job.progress;
  return h("tr", { "data-job": job.id },
    h("td", {}, jobLink(job.id)),
    h("td", {}, badge(job.status)),
    h("td", {}, job.spec.name || job.spec.model?.name || ""),
    h("td", {}, progressBar(p.percent), " ", h("span", { class: "muted" }, p.stage)),
    h("td", { class: "num" }, p.total_epochs ? `${p.epoch}/${p.total_epochs}` : "–"),
    h("td", { class: "num val-acc" }, fixed(job.metrics?.val_accuracy)),
    h("td", { class: "num" }, job.status === "running" ? duration(p.eta_seconds) : "–"),
    h("td", {}, tryLink(job.model_id)),
    h("td", { class: "muted" }, when(job.created_at)));
}

async function jobsPage() {
  const body = h("tbody");
  const count = h("span", { class: "muted" });
  main.replaceChildren(
    h("h1", {}, "Training jobs ", count),
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "status", "name / model", "progress", "epoch", "val acc", "ETA", "model",
                                  "created"].map((x) => h("th", x === "val acc" ? { title: SERVED_ACC } : {}, x)))),
      body));
  await poll(async () => {
    const page = await api("/v1/jobs?limit=50");
    count.textContent = `(${page.total})`;
    body.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) {
      body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs yet. Upload a dataset and train: ",
                                h("code", {}, "textclf datasets upload train.csv"), " then ",
                                h("code", {}, "textclf train <dataset id> --watch"))));
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// one job: progress, learning curves, evaluation

/** Per-epoch curves (the network's), with the served model's val accuracy marked once the job has a model. */
function curves(job) {
  const series = (key) => job.history.map((e) => [e.epoch, e[key]]);
  const served = job.metrics ? [{ name: "served model, val accuracy", epoch: job.metrics.best_epoch,
                                  value: job.metrics.val_accuracy }] : [];
  const accuracy = lineChart({ title: "Accuracy per epoch, the network's", clamp: [0, 1], marks: served,
                               format: (v) => v.toFixed(2),
                               series: [{ name: "train", points: series("train_accuracy") },
                                        { name: "validation", points: series("val_accuracy") },
                                        { name: "validation macro-F1", points: series("val_macro_f1") }] });
  accuracy.dataset.chart = "accuracy";
  return [
    lineChart({ title: "Loss per epoch, the network's", series: [{ name: "train", points: series("train_loss") },
                                                                 { name: "validation", points: series("val_loss") }] }),
    accuracy,
    lineChart({ title: "Learning rate", format: (v) => (v === 0 ? "0" : v.toExponential(1)),
                series: [{ name: "lr", points: series("lr") }] }),
  ];
}

function jobFacts(job) {
  const p = job.progress;
  const facts = [
    ["status", badge(job.status)],
    ["stage", p.stage],
    ["progress", h("span", {}, progressBar(p.percent), ` ${fixed(p.percent, 1)} %`)],
    ["epoch", p.total_epochs ? `${p.epoch} of ${p.total_epochs}` : "–"],
    ["step", p.total_steps ? `${p.step} of ${p.total_steps}` : "–"],
    ["ETA", job.status === "running" ? duration(p.eta_seconds) : "–"],
    ["device", job.device || "–"],
    ["attempts", job.attempts],
    ["dataset", h("span", { class: "mono" }, job.dataset_id || "–")],
    ["model", tryLink(job.model_id, job.model_id)],
    ["created", when(job.created_at)],
    ["finished", when(job.finished_at)],
  ];
  if (job.metrics) {
    facts.push(["val accuracy", fixed(job.metrics.val_accuracy)], ["val macro-F1", fixed(job.metrics.val_macro_f1)]);
    if (job.metrics.test_accuracy !== undefined) facts.push(["test accuracy", fixed(job.metrics.test_accuracy)]);
    // An encoder: the base model it was fine-tuned from, and the weights' sha256 it was checked against.
    if (job.metrics.base_model) {
      facts.push(["base model", h("span", { title: `sha256 ${job.metrics.base_model.sha256}` },
        `${job.metrics.base_model.name} `, h("span", { class: "mono" }, job.metrics.base_model.sha256.slice(0, 12)))]);
    }
    // A blended model (model.tfidf): the curves are the network's epochs; these say what each half scored alone.
    if (job.metrics.network_val_accuracy !== undefined) {
      facts.push(["val accuracy, network alone", fixed(job.metrics.network_val_accuracy)],
                 ["val accuracy, TF-IDF alone", fixed(job.metrics.tfidf_val_accuracy)]);
      if (job.metrics.tfidf_weight !== undefined) {
        facts.push(["TF-IDF weight in the blend", String(job.metrics.tfidf_weight) +
                    (job.metrics.tfidf_refit ? " (refit on validation rows)" : "")]);
      }
    }
  }
  const list = h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  if (job.error) {
    list.append(h("dt", {}, "error"), h("dd", { class: "error-text" }, `${job.error.code}: ${job.error.message}`));
  }
  return list;
}

function evaluationView(split) {
  const perClass = table(["label", "precision", "recall", "F1", "support"], split.per_class.map((c) =>
    h("tr", {}, h("td", {}, c.label), h("td", { class: "num" }, fixed(c.precision)),
      h("td", { class: "num" }, fixed(c.recall)),
      h("td", { class: "num" }, progressBar(100 * c.f1), " ", fixed(c.f1)),
      h("td", { class: "num" }, c.support))), { id: "per-class" });
  const summary = h("dl", { class: "facts" }, [
    ["examples", split.examples], ["accuracy", fixed(split.accuracy)], ["macro-F1", fixed(split.macro_f1)],
    ["weighted F1", fixed(split.weighted_f1)], ["log loss", fixed(split.log_loss)],
    ["calibration error", fixed(split.ece)],
  ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const mistakes = split.misclassified.slice(0, 10);
  return h("div", {},
    summary,
    h("div", { class: "eval-grid" },
      heatmap(split.confusion_matrix.labels, split.confusion_matrix.matrix),
      h("div", {}, h("h3", {}, "Per class"), perClass)),
    mistakes.length ? h("div", {}, h("h3", {}, "Most confident mistakes"),
      table(["text", "true", "predicted", "score"], mistakes.map((m) =>
        h("tr", {}, h("td", { class: "text" }, m.text), h("td", {}, m.label), h("td", {}, m.predicted),
          h("td", { class: "num" }, fixed(m.score)))))) : null);
}

async function evaluationSection(modelId) {
  const evaluation = await api(`/v1/models/${modelId}/evaluation`);
  const splits = ["validation", "test"].filter((name) => evaluation[name]);
  const section = h("section", { id: "evaluation" }, h("h2", {}, "Evaluation of the exported model"));
  if (!splits.length) {
    section.append(h("p", { class: "muted" }, "No evaluation recorded."));
    return section;
  }
  const view = h("div");
  const tabs = h("div", { class: "tabs" }, splits.map((name) => h("button", {
    type: "button", "data-split": name,
    onclick: (event) => {
      for (const b of tabs.children) b.classList.toggle("active", b === event.target);
      view.replaceChildren(evaluationView(evaluation[name]));
    } }, name)));
  tabs.children[0].classList.add("active");
  view.replaceChildren(evaluationView(evaluation[splits[0]]));
  section.append(tabs, view);
  return section;
}

async function jobPage(jobId) {
  const title = h("h1", {}, "Job ", h("span", { class: "mono" }, jobId));
  const facts = h("div");
  const charts = h("div", { class: "charts", id: "curves" });
  const evaluation = h("div");
  const cancel = h("button", { type: "button", hidden: true, onclick: async () => {
    try { await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }); } catch (error) { showError(error); }
  } }, "Cancel job");
  const spec = h("pre", { class: "spec" });
  main.replaceChildren(title, cancel, facts, h("h2", {}, "Learning curves"), charts, evaluation,
                       h("details", {}, h("summary", {}, "Training spec (resolved)"), spec));
  let drawn = "";
  await poll(async () => {
    const job = await api(`/v1/jobs/${jobId}`);
    facts.replaceChildren(jobFacts(job));
    cancel.hidden = ENDED.has(job.status) || job.status === "cancelling";
    spec.textContent = JSON.stringify(job.spec, null, 2);
    if (`${job.history.length} ${job.status}` !== drawn) {  // redraw when an epoch was added or the job ended
      drawn = `${job.history.length} ${job.status}`;
      charts.replaceChildren(...curves(job));
    }
    if (!ENDED.has(job.status)) return true;
    if (job.model_id) evaluation.replaceChildren(await evaluationSection(job.model_id));
    return false;
  });
}

// ---------------------------------------------------------------------------------------------------------
// models and aliases

async function modelsPage() {
  const models = h("tbody");
  const aliases = h("tbody");
  const select = h("select", { id: "alias-model" });
  const name = h("input", { id: "alias-name", placeholder: "default", required: true,
                            pattern: ALIAS_PATTERN });
  const form = h("form", { id: "alias-form", class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api(`/v1/aliases/${encodeURIComponent(name.value)}`, { method: "PUT", body: { model_id: select.value } });
      say(`Alias ${name.value} now points at ${shortId(select.value)}.`, "ok");
      await draw();
    } catch (error) { showError(error); }
  } },
  h("label", {}, "alias ", name), h("label", {}, " → model ", select), h("button", { type: "submit" }, "Point alias"));

  async function draw() {
    const [page, aliasList] = await Promise.all([api("/v1/models?limit=200"), api("/v1/aliases")]);
    models.replaceChildren(...page.items.map((m) => h("tr", { "data-model": m.id },
      h("td", {}, h("span", { class: "mono" }, shortId(m.id))),
      h("td", {}, m.name),
      h("td", {}, m.aliases.map((a) => h("span", { class: "chip" }, a))),
      h("td", { title: m.labels.join(", ") },
        `${m.labels.length}: ${m.labels.slice(0, 4).join(", ")}${m.labels.length > 4 ? " …" : ""}`),
      h("td", {}, m.spec.model?.name || ""),
      h("td", { class: "num" }, fixed(m.metrics.val_accuracy)),
      h("td", { class: "num" }, fixed(m.metrics.val_macro_f1)),
      h("td", { class: "num" }, fixed(m.metrics.test_accuracy)),
      h("td", {}, jobLink(m.job_id)),
      h("td", { class: "muted" }, when(m.created_at)),
      h("td", {}, h("a", { href: `/try?model=${m.id}` }, "try")))));
    if (!page.items.length) models.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No models yet.")));
    const chosen = select.value;
    select.replaceChildren(...page.items.map((m) => h("option", { value: m.id }, `${m.name} (${shortId(m.id)})`)));
    if (chosen) select.value = chosen;
    aliases.replaceChildren(...aliasList.items.map((a) => h("tr", {},
      h("td", {}, h("span", { class: "chip" }, a.name)),
      h("td", { class: "mono" }, a.model_id),
      h("td", { class: "muted" }, when(a.updated_at)),
      h("td", {}, h("button", { type: "button", onclick: async () => {
        try { await api(`/v1/aliases/${encodeURIComponent(a.name)}`, { method: "DELETE" }); await draw(); }
        catch (error) { showError(error); }
      } }, "remove")))));
    if (!aliasList.items.length) aliases.append(h("tr", {}, h("td", { colspan: 4, class: "muted" },
      "No aliases: /v1/predict serves the newest model. Point `default` at a model to choose.")));
  }

  main.replaceChildren(
    h("h1", {}, "Models"),
    h("table", { id: "models" }, h("thead", {}, h("tr", {}, ["model", "name", "aliases", "labels", "kind", "val acc",
      "val macro-F1", "test acc", "job", "created", ""].map((x) => h("th", {}, x)))), models),
    h("h2", {}, "Aliases"), form,
    h("table", { id: "aliases" },
      h("thead", {}, h("tr", {}, ["alias", "model", "updated", ""].map((x) => h("th", {}, x)))), aliases));
  try { await draw(); } catch (error) { showError(error); }
}

// ---------------------------------------------------------------------------------------------------------
// try it: classify typed text

async function tryPage() {
  const texts = h("textarea", { id: "try-text", rows: 5, placeholder: "One text per line" });
  const target = h("select", { id: "try-model" }, h("option", { value: "" }, "default model"));
  const topK = h("input", { id: "try-topk", type: "number", min: 1, max: 20, value: 3 });
  const results = h("div", { id: "try-results" });
  const form = h("form", { id: "try-form", onsubmit: async (event) => {
    event.preventDefault();
    const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!lines.length) return say("Type a sentence first.");
    const [kind, value] = target.value.split(":");
    const path = kind === "model" ? `/v1/models/${value}/predict`
      : kind === "alias" ? `/v1/predict?alias=${encodeURIComponent(value)}` : "/v1/predict";
    try {
      const reply = await api(path, { method: "POST", body: { texts: lines, top_k: Number(topK.value) || 1 } });
      say("");
      results.replaceChildren(h("p", { class: "muted" }, "model ", h("span", { class: "mono" }, reply.model_id)),
        ...reply.predictions.map((p, i) => h("div", { class: "prediction" },
          h("div", { class: "text" }, lines[i]),
          h("div", {}, h("span", { class: "label" }, p.label), " ", h("span", { class: "muted" }, fixed(p.score))),
          h("div", { class: "topk" }, p.top_k.map((k) => h("div", { class: "topk-row" },
            h("span", { class: "topk-label" }, k.label), progressBar(100 * k.score),
            h("span", { class: "num" }, fixed(k.score))))))));
    } catch (error) { showError(error); }
  } },
  texts, h("div", { class: "inline" }, h("label", {}, "model ", target), h("label", {}, " top-k ", topK),
                                       h("button", { type: "submit" }, "Classify")));
  main.replaceChildren(h("h1", {}, "Try a model"), form, results);
  try {
    const [page, aliasList] = await Promise.all([api("/v1/models?limit=200"), api("/v1/aliases")]);
    target.append(...aliasList.items.map((a) => h("option", { value: `alias:${a.name}` }, `alias ${a.name}`)),
                  ...page.items.map((m) => h("option", { value: `model:${m.id}` }, `${m.name} (${shortId(m.id)})`)));
    const wanted = new URLSearchParams(location.search).get("model");
    if (wanted) target.value = `model:${wanted}`;
  } catch (error) { showError(error); }
}

// ---------------------------------------------------------------------------------------------------------
// start

const keyInput = document.getElementById("api-key");
keyInput.value = getKey();
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(keyInput.value.trim());
  location.reload();
});

const path = location.pathname;
const jobMatch = path.match(/^\/jobs\/([^/]+)$/);
const sweepMatch = path.match(/^\/sweeps\/([^/]+)$/);
const page = jobMatch ? "jobs" : sweepMatch || path === "/sweeps" ? "sweeps"
  : path === "/models" ? "models" : path === "/try" ? "try" : "jobs";
for (const link of document.querySelectorAll("nav a[data-page]")) {
  link.classList.toggle("active", link.dataset.page === page);
}
if (jobMatch) jobPage(decodeURIComponent(jobMatch[1]));
else if (sweepMatch) sweepPage(decodeURIComponent(sweepMatch[1]));
else if (page === "sweeps") sweepsPage();
else if (page === "models") modelsPage();
else if (page === "try") tryPage();
else jobsPage();
