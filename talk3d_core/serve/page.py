"""HTML of ``talk3d serve``: the subject list and one subject's page (plain HTML, CSS and JavaScript,
no external files, so it works offline)."""

from __future__ import annotations

import html
import json

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
section { margin-bottom: 1.5rem; } label { margin-right: 1rem; } .row { margin: .5rem 0; }
video, img, canvas { background: #111; max-width: 100%; display: block; margin-top: .5rem; }
.error { color: #b00020; } .note { color: #666; font-size: .9em; } progress { width: 20rem; }
"""


def _document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def index_page(subjects: list[str], results: str) -> str:
    """The trained subjects as links to their pages."""
    if subjects:
        items = "".join(f'<li><a href="/s/{html.escape(n)}">{html.escape(n)}</a></li>' for n in subjects)
        listing = f'<ul id="subjects">{items}</ul>'
    else:
        listing = (
            f'<p id="subjects">No trained subject under {html.escape(results)}/ yet: add one with '
            "<code>talk3d add NAME VIDEO</code> and train it with <code>talk3d run NAME</code>.</p>"
        )
    return _document("Talk3D portraits", f"<h1>Talk3D portraits</h1>{listing}")


def subject_page(name: str, render_size: int, sizes: list[int], fps: float, max_upload: int) -> str:
    """One subject: drive with an uploaded or recorded audio, turn the head, stream live."""
    options = "".join(
        f'<option value="{s}"{" selected" if s == render_size else ""}>{s} px</option>' for s in sizes
    )
    config = json.dumps({"name": name, "fps": fps, "maxUpload": max_upload})
    body = f"""
<p><a href="/">all subjects</a></p>
<h1>{html.escape(name)}</h1>
<section>
  <h2>Audio</h2>
  <div class="row"><input type="file" id="audio-file" accept="audio/*,video/*">
    <button id="record">Record from the microphone</button> <span id="audio-name" class="note"></span></div>
  <div class="row"><label>Camera <select id="camera"><option value="tracked">tracked head motion</option>
    <option value="fixed">fixed, frontal</option></select></label>
    <label>Size <select id="size">{options}</select></label>
    <span class="note">uploads up to {max_upload / 2**20:g} MB</span></div>
  <div id="audio-error" class="error"></div>
</section>
<section>
  <h2>Render a video</h2>
  <button id="render">Render</button> <progress id="progress" max="1" value="0"></progress>
  <span id="render-status"></span>
  <video id="video" controls playsinline></video>
  <a id="download" href="#" download hidden>Download the video</a>
</section>
<section>
  <h2>Turn the head</h2>
  <div class="row"><label>Yaw <input type="range" id="yaw" min="-45" max="45" step="1" value="0">
    <output id="yaw-value">0</output>&deg;</label>
  <label>Pitch <input type="range" id="pitch" min="-30" max="30" step="1" value="0">
    <output id="pitch-value">0</output>&deg;</label>
  <label>Frame <input type="number" id="frame-index" min="0" value="" placeholder="first held-out"
    style="width: 8em"></label></div>
  <img id="frame" alt="the portrait from the chosen view">
  <span id="frame-status" class="note"></span>
</section>
<section>
  <h2>Live</h2>
  <p class="note">Streams frames while they render and plays the audio from the first frame on.</p>
  <button id="live">Start live</button> <span id="live-status"></span>
  <canvas id="live-canvas" width="{render_size}" height="{render_size}"></canvas>
  <audio id="live-audio"></audio>
</section>
<script>
const CONFIG = {config};
const $ = (id) => document.getElementById(id);
let audioBlob = null, audioName = "";

function setAudio(blob, name) {{
  audioBlob = blob; audioName = name; $("audio-name").textContent = name;
  $("audio-error").textContent = "";
}}
$("audio-file").addEventListener("change", (e) => {{
  const file = e.target.files[0];
  if (!file) return;
  if (file.size > CONFIG.maxUpload) {{
    $("audio-error").textContent = file.name + " is over the upload limit"; return;
  }}
  setAudio(file, file.name);
}});

let recorder = null;
$("record").addEventListener("click", async () => {{
  if (recorder) {{ recorder.stop(); return; }}
  try {{
    const stream = await navigator.mediaDevices.getUserMedia({{audio: true}});
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {{
      stream.getTracks().forEach((t) => t.stop());
      setAudio(new Blob(chunks, {{type: recorder.mimeType}}), "microphone.webm");
      recorder = null; $("record").textContent = "Record from the microphone";
    }};
    recorder.start(); $("record").textContent = "Stop recording";
  }} catch (err) {{ $("audio-error").textContent = "microphone: " + err; }}
}});

function form() {{
  if (!audioBlob) throw new Error("choose an audio file or record one first");
  const data = new FormData();
  data.append("audio", audioBlob, audioName);
  data.append("camera", $("camera").value);
  data.append("size", $("size").value);
  return data;
}}
async function failure(response) {{
  try {{ return (await response.json()).error; }}
  catch (e) {{ return response.status + " " + response.statusText; }}
}}

$("render").addEventListener("click", async () => {{
  const status = $("render-status");
  try {{
    $("render").disabled = true; status.textContent = "uploading"; $("progress").value = 0;
    const response = await fetch(`/api/s/${{CONFIG.name}}/drive`, {{method: "POST", body: form()}});
    if (!response.ok) throw new Error(await failure(response));
    let job = await response.json();
    while (job.state === "queued" || job.state === "rendering") {{
      await new Promise((r) => setTimeout(r, 300));
      job = await (await fetch(`/api/jobs/${{job.job}}`)).json();
      if (job.total) $("progress").value = job.done / job.total;
      status.textContent = job.state + (job.total ? ` ${{job.done}}/${{job.total}} frames` : "");
    }}
    if (job.state !== "done") throw new Error(job.error);
    $("progress").value = 1; status.textContent = `done in ${{job.seconds.toFixed(1)}} s`;
    $("video").src = job.video; $("download").href = job.video; $("download").hidden = false;
  }} catch (err) {{ status.textContent = ""; $("audio-error").textContent = err.message; }}
  finally {{ $("render").disabled = false; }}
}});

let frameBusy = false, frameAgain = false, frameCount = 0;
async function updateFrame() {{
  $("yaw-value").textContent = $("yaw").value; $("pitch-value").textContent = $("pitch").value;
  if (frameBusy) {{ frameAgain = true; return; }}
  frameBusy = true;
  const started = performance.now();
  const query = new URLSearchParams({{yaw: $("yaw").value, pitch: $("pitch").value,
                                      frame: $("frame-index").value, size: $("size").value}});
  try {{
    const response = await fetch(`/api/s/${{CONFIG.name}}/frame?${{query}}`);
    if (!response.ok) throw new Error(await failure(response));
    const url = URL.createObjectURL(await response.blob());
    const old = $("frame").src; $("frame").src = url; if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    frameCount += 1;
    $("frame").dataset.count = frameCount;
    $("frame-status").textContent = `${{Math.round(performance.now() - started)}} ms`;
  }} catch (err) {{ $("frame-status").textContent = err.message; }}
  frameBusy = false;
  if (frameAgain) {{ frameAgain = false; updateFrame(); }}
}}
for (const id of ["yaw", "pitch", "frame-index", "size"]) $(id).addEventListener("input", updateFrame);
updateFrame();

$("live").addEventListener("click", async () => {{
  const status = $("live-status"), canvas = $("live-canvas"), context = canvas.getContext("2d");
  try {{
    $("live").disabled = true; status.textContent = "uploading";
    const started = performance.now();
    const response = await fetch(`/api/s/${{CONFIG.name}}/live`, {{method: "POST", body: form()}});
    if (!response.ok) throw new Error(await failure(response));
    const reader = response.body.getReader();
    let buffer = new Uint8Array(0), header = null, frames = 0, first = null;
    const player = $("live-audio");
    player.src = URL.createObjectURL(audioBlob);
    while (true) {{
      const {{done, value}} = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer); joined.set(value, buffer.length); buffer = joined;
      while (buffer.length >= 4) {{
        const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(0);
        if (buffer.length < 4 + length) break;
        const payload = buffer.slice(4, 4 + length); buffer = buffer.slice(4 + length);
        if (!header) {{ header = JSON.parse(new TextDecoder().decode(payload)); continue; }}
        const bitmap = await createImageBitmap(new Blob([payload], {{type: "image/jpeg"}}));
        canvas.width = bitmap.width; canvas.height = bitmap.height; context.drawImage(bitmap, 0, 0);
        frames += 1;
        const now = performance.now();
        if (first === null) {{ first = now; player.play().catch(() => {{}}); }}
        const rate = frames > 1 ? (frames - 1) / ((now - first) / 1000) : 0;
        canvas.dataset.frames = frames;
        canvas.dataset.latencyMs = Math.round(first - started);
        canvas.dataset.fps = rate.toFixed(2);
        status.textContent = `${{frames}}/${{header.frames}} frames, ` +
          `first after ${{Math.round(first - started)}} ms, ` +
          `${{rate.toFixed(1)}} frames/s (real time is ${{header.fps}})`;
      }}
    }}
    canvas.dataset.finished = "1";
  }} catch (err) {{ status.textContent = ""; $("audio-error").textContent = err.message; }}
  finally {{ $("live").disabled = false; }}
}});
</script>
"""
    return _document(f"{name} - Talk3D", body)
