// The Tome HTTP API as the page uses it: JSON requests, uploads with progress, and the
// answer stream. Every request carries the saved API key, if any; every failure becomes an
// ApiError holding the server's own message.

const KEY_STORAGE = "tome.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The message of an OpenAI-shaped error body, or the status line when the body is not one.
function errorOf(status, statusText, bodyText) {
  try {
    const message = JSON.parse(bodyText).error.message;
    if (message) return new ApiError(status, message);
  } catch {
    // not JSON: fall through to the status line
  }
  return new ApiError(status, `${status} ${statusText}`.trim());
}

async function failure(response) {
  return errorOf(response.status, response.statusText, await response.text());
}

export async function request(method, path, body) {
  const headers = authHeaders();
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function download(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// POST /v1/files through XMLHttpRequest: fetch() cannot report upload progress.
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else reject(errorOf(xhr.status, xhr.statusText, xhr.responseText));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error"));
    const form = new FormData();
    form.append("file", file);
    form.append("purpose", "file-extract");
    xhr.send(form);
  });
}

// Each `data:` payload of a server-sent event stream, parsed, until `[DONE]`.
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// POST /v1/conversations/{id}/answers as a stream of start, delta, done and error events.
export async function* streamAnswer(conversationId, body, signal) {
  const response = await fetch(`/v1/conversations/${conversationId}/answers`, {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  yield* serverEvents(response.body);
}
