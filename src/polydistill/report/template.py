"""The layout of `report.html`: one Jinja2 template with its CSS inline, no scripts, no links out.

Plots arrive as `data:` URIs, so the file opens offline and can be mailed on its own. Values come
already ordered from `report.tables`; the filter `show(kind)` formats them (kinds: percent,
number, share, count; `None` and NaN print as a dash).
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>polydistill report: {{ run_name }}</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
         max-width: 72rem; padding: 0 1rem; color: #1c1c1c; line-height: 1.4; }
  h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
  h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
  .meta { color: #555; margin-top: 0; }
  .notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6rem 1rem; }
  .absent { color: #777; font-style: italic; }
  table { border-collapse: collapse; margin: 0.8rem 0; font-variant-numeric: tabular-nums; }
  th, td { border: 1px solid #d6d6d6; padding: 0.25rem 0.6rem; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  thead th { background: #f2f2f2; }
  td.best { background: #d9f2d9; font-weight: 600; }
  tr.student td:first-child { font-weight: 600; }
  tfoot td { border-top: 2px solid #999; }
  figure { margin: 0.8rem 0; }
  figure img { max-width: 100%; height: auto; }
  figcaption { color: #777; font-size: 0.8rem; }
</style>
</head>
<body>
<h1>polydistill run report</h1>
<p class="meta">Run folder <code>{{ run_name }}</code> &middot; {{ models | length }} models
  &middot; domains: {{ domains | join(", ") }}
  {%- if contributions %} &middot; fusion strategy: <b>{{ contributions.strategy }}</b>
  {%- endif %}</p>
{% if notes %}
<div class="notes" id="notes"><b>Absent or partly unreadable inputs:</b>
<ul>{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul></div>
{% endif %}

{% macro plot(name, alt) -%}
<figure id="plot-{{ name }}"><img src="data:image/png;base64,{{ images[name] }}" alt="{{ alt }}">
<figcaption>plots/{{ name }}.png</figcaption></figure>
{%- endmacro %}

{% macro teacher_table(table, id, fmt) -%}
<table id="{{ id }}">
<thead><tr><th>domain</th>{% for t in table.teachers %}<th>{{ t }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for domain, values in table.rows %}
<tr><td>{{ domain }}</td>{% for v in values %}<td>{{ v | show(fmt) }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody>
{%- if table.totals %}
<tfoot><tr><td>all domains</td>
{%- for v in table.totals %}<td>{{ v | show(fmt) }}</td>{% endfor %}</tr></tfoot>
{%- endif %}
</table>
{%- endmacro %}

{% macro metric_table(table, id, fmt, best_word) -%}
<table id="{{ id }}">
<thead><tr><th>model</th><th>params</th>
{%- for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for row in table.rows %}
<tr class="{{ 'student' if row.model == 'student' else '' }}"><td>{{ row.model }}</td>
<td>{{ row.params | show("count") }}</td>
{%- for cell in row.cells %}<td{% if cell.best %} class="best" title="{{ best_word }}"{% endif %}>
{{- cell.value | show(fmt) }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody></table>
{%- endmacro %}

<h2 id="accuracy">Accuracy on the held-out sets</h2>
{{ plot("accuracy", "Grouped bars: accuracy per domain for every model") }}
<p>Exact-match accuracy per domain; the best of each column is highlighted.</p>
{{ metric_table(accuracy, "accuracy-table", "percent", "highest") }}

{% if targets %}
<h2 id="targets">Targets</h2>
<p>What the specialists benchmark asks of the student ({{ targets | selectattr("met") | list
  | length }} of {{ targets | length }} met).</p>
<table id="targets-table">
<thead><tr><th>target</th><th>needed</th><th>student</th><th>met</th></tr></thead>
<tbody>
{%- for row in targets %}
<tr><td>{{ row.target }}</td><td>{{ row.needed | show(row.kind) }}</td>
<td{% if row.met %} class="best"{% endif %}>{{ row.reached | show(row.kind) }}</td>
<td>{{ "yes" if row.met else "no" }}</td></tr>
{%- endfor %}
</tbody></table>
{% endif %}

{% if worth %}
<h2 id="worth">What each teacher is worth</h2>
<p>The student's own recipe trained without each teacher in turn (<code>leave_one_out</code>):
held-out accuracy without it, and what it adds to the student.</p>
<table id="worth-table">
<thead><tr><th>without</th>{% for d in domains %}<th>{{ d }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for row in worth %}
<tr><td>{{ row.teacher }}</td>
{%- for without, adds in row.cells %}
<td>{{ without | show("percent") }} ({{ adds | points }})</td>
{%- endfor %}</tr>
{%- endfor %}
</tbody></table>
{% endif %}

<h2 id="bits-per-byte">Bits per byte of the gold answers</h2>
<p>Lower is better; the best of each column is highlighted.</p>
{{ metric_table(bits_per_byte, "bits-per-byte-table", "number", "lowest") }}

<h2 id="training">Training</h2>
{% if "loss" in images %}
{{ plot("loss", "Line plot: training loss per step for every trained model") }}
<table id="training-table">
<thead><tr><th>model</th><th>steps</th><th>first loss</th><th>final loss</th>
<th>lowest loss</th><th>final loss parts</th><th>median tokens/s</th>
<th>weights chosen on validation: step (agreement)</th></tr></thead>
<tbody>
{%- for row in training %}
<tr><td>{{ row.model }}</td><td>{{ row.steps | show("count") }}</td>
<td>{{ row.first_loss | show("number") }}</td>
<td>{{ row.final_loss | show("number") }}</td><td>{{ row.lowest_loss | show("number") }}</td>
<td>{% for name, value in row.final_parts %}{{ name }} {{ value | show("number") }}
{%- if not loop.last %}, {% endif %}{% endfor %}</td>
<td>{{ row.tokens_per_s | show("count") }}</td>
<td>{% if row.chosen %}{{ row.chosen[0] | show("count") }} ({{ row.chosen[1] | show("number") }})
{%- else %}last{% endif %}</td></tr>
{%- endfor %}
</tbody></table>
{% else %}
<p class="absent">No training logs in this run folder, so no loss curves.</p>
{% endif %}

<h2 id="contributions">Teacher contributions</h2>
{% if contributions %}
<p>Fusion strategy <b>{{ contributions.strategy }}</b>; teachers:
  {{ contributions.teachers | join(", ") }}.</p>
{% if "contributions" in images %}
{{ plot("contributions", "Stacked bars: each teacher's share of the fused mass per domain") }}
<p>Share of the fused target probability mass each teacher supplied, per domain:</p>
{{ teacher_table(mass, "mass-table", "share") }}
{% endif %}
{% if completions.rows %}
<p>Training completions written by each teacher, per domain:</p>
{{ teacher_table(completions, "completions-table", "count") }}
{% else %}
<p class="absent">contributions.json records no completions per teacher.</p>
{% endif %}
{% if "tail" in images %}
<p>Mean share of each teacher's probability mass that projection into the student's vocabulary
  could not place (left in the tail):</p>
{{ plot("tail", "Bars: mean projection tail share per teacher") }}
{% else %}
<p class="absent">contributions.json records no projection tail per teacher.</p>
{% endif %}
{% else %}
<p class="absent">No contributions.json in this run folder (a run without a multi-teacher
  student), so no teacher contributions.</p>
{% endif %}
</body>
</html>
"""
