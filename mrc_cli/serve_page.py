"""The page `mrc serve` answers at `/`: paste a context, ask a question, see the answer marked in the context.

One self-contained HTML document (inline CSS and JavaScript, nothing fetched but `answer` from the same server), so
it works where the server has no network. `/?context=...&question=...` fills the form and asks at once: a link that
shows an answer, and what the browser test opens.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mrc serve</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  textarea, input { width: 100%; box-sizing: border-box; font: inherit; padding: .4rem; }
  textarea { height: 12rem; }
  button { font: inherit; padding: .4rem 1.2rem; margin-top: .5rem; }
  #passage { white-space: pre-wrap; border: 1px solid #ccc; padding: .8rem; background: #fafafa; }
  mark { background: #ffe066; padding: 0 .1rem; }
  #error { color: #b00020; }
  .muted { color: #666; font-size: .9rem; }
</style>
</head>
<body>
<h1>mrc serve</h1>
<p class="muted">Answers come from <code>POST /answer</code> on this server; <a href="docs">API docs</a>,
<a href="health">health</a>, <a href="metrics">metrics</a>.</p>
<form id="ask">
  <label for="context">Context</label>
  <textarea id="context" required placeholder="Paste a paragraph here."></textarea>
  <label for="question">Question</label>
  <input id="question" required placeholder="Ask something the paragraph answers.">
  <button type="submit">Ask</button>
</form>
<p id="status" class="muted"></p>
<p id="error"></p>
<section id="result" hidden>
  <h2>Answer: <span id="answer-text"></span></h2>
  <p id="answer-odds" class="muted"></p>
  <div id="passage"></div>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function show(context, answer) {
  // The server counts characters as Python does (code points); JavaScript strings count UTF-16 units, which differ
  // after any character outside the Basic Multilingual Plane (emoji, rare CJK), so slice code points.
  const chars = Array.from(context);
  const passage = $("passage");
  passage.replaceChildren();
  if (answer.start >= 0) {
    const mark = document.createElement("mark");
    mark.id = "answer";
    mark.textContent = chars.slice(answer.start, answer.end).join("");
    passage.append(chars.slice(0, answer.start).join(""), mark, chars.slice(answer.end).join(""));
  } else {
    passage.append(context);
  }
  $("answer-text").textContent = answer.text || "(no answer in this context)";
  let odds = "probability " + answer.probability.toFixed(3);
  if (answer.no_answer_probability !== null) {
    odds += ", no-answer probability " + answer.no_answer_probability.toFixed(3);
  }
  $("answer-odds").textContent = odds;
  $("result").hidden = false;
}

async function ask(event) {
  if (event) event.preventDefault();
  const context = $("context").value, question = $("question").value;
  $("error").textContent = "";
  $("status").textContent = "asking...";
  document.body.dataset.state = "asking";
  try {
    const response = await fetch("answer", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({context: context, questions: [question]}),
    });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    }
    show(context, body.answers[0]);
    $("status").textContent = "";
    document.body.dataset.state = "answered";
  } catch (err) {
    $("result").hidden = true;
    $("status").textContent = "";
    $("error").textContent = err.message;
    document.body.dataset.state = "failed";
  }
}

$("ask").addEventListener("submit", ask);
const given = new URLSearchParams(location.search);
if (given.get("context") && given.get("question")) {
  $("context").value = given.get("context");
  $("question").value = given.get("question");
  ask();
}
</script>
</body>
</html>
"""
