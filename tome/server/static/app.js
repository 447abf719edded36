// Tome's reading assistant in the browser: conversations, their sources (uploaded files and
// URLs) and streamed answers. Message HTML comes rendered and sanitized by the server; every
// other text goes in through textContent.

import {
  ApiError,
  apiKey,
  download,
  request,
  saveApiKey,
  streamAnswer,
  uploadFile,
} from "./api.js";

const STRINGS = {
  en: {
    language: "Language",
    newChat: "New chat",
    conversations: "Conversations",
    noConversations: "No conversations yet.",
    untitled: "Untitled",
    rename: "Rename",
    delete: "Delete",
    confirmDelete: "Delete “{title}”?",
    exportMarkdown: "Markdown",
    exportJson: "JSON",
    sources: "Sources",
    noSources: "No sources yet: upload a file or attach a URL.",
    upload: "Upload file",
    uploading: "Uploading {name}",
    dropHere: "Drop files here to attach them",
    urlPlaceholder: "https://… a web page to read",
    attachUrl: "Attach URL",
    tokens: "{tokens} tokens",
    remove: "Remove",
    emptyHint: "Upload a document or attach a URL, then ask about it.",
    askPlaceholder: "Ask a question (Enter sends, Shift+Enter for a new line)",
    webSearch: "Web search",
    send: "Send",
    stop: "Stop",
    regenerate: "Regenerate",
    you: "You",
    assistant: "Tome",
    system: "System",
    modeFull: "Full document",
    modeRetrieval: "Retrieval",
    windowGauge: "{used} / {size} tokens",
    stopped: "Stopped",
    cutOff: "Cut off at the length limit",
    citationSource: "Source",
    citationSection: "Section",
    citationPage: "Page",
    citation: "Citation [{number}]",
    keyPrompt: "This server needs an API key:",
    saveKey: "Use key",
    forgetKey: "Forget API key",
    close: "Close",
  },
  zh: {
    language: "语言",
    newChat: "新对话",
    conversations: "对话",
    noConversations: "还没有对话。",
    untitled: "未命名",
    rename: "重命名",
    delete: "删除",
    confirmDelete: "删除“{title}”？",
    exportMarkdown: "Markdown",
    exportJson: "JSON",
    sources: "资料",
    noSources: "还没有资料：上传文件或添加网址。",
    upload: "上传文件",
    uploading: "正在上传 {name}",
    dropHere: "把文件拖到这里即可添加",
    urlPlaceholder: "https://… 要阅读的网页",
    attachUrl: "添加网址",
    tokens: "{tokens} 个词元",
    remove: "移除",
    emptyHint: "上传文档或添加网址，然后就它提问。",
    askPlaceholder: "输入问题（Enter 发送，Shift+Enter 换行）",
    webSearch: "联网搜索",
    send: "发送",
    stop: "停止",
    regenerate: "重新生成",
    you: "你",
    assistant: "Tome",
    system: "系统",
    modeFull: "全文",
    modeRetrieval: "检索",
    windowGauge: "{used} / {size} 个词元",
    stopped: "已停止",
    cutOff: "已达长度上限，回答被截断",
    citationSource: "来源",
    citationSection: "章节",
    citationPage: "页码",
    citation: "引用 [{number}]",
    keyPrompt: "此服务器需要 API 密钥：",
    saveKey: "使用密钥",
    forgetKey: "清除 API 密钥",
    close: "关闭",
  },
};
const LANGUAGE_STORAGE = "tome.language";
const TITLE_CHARS = 80;
const ABORT_SAVE_POLLS = 20;
const POLL_MS = 150;

const $ = (id) => document.getElementById(id);
const els = {
  modelName: $("model-name"),
  language: $("language-switch"),
  forgetKey: $("forget-key"),
  keyForm: $("key-form"),
  keyInput: $("api-key"),
  errorBanner: $("error-banner"),
  errorText: $("error-text"),
  errorClose: $("error-close"),
  newChat: $("new-chat"),
  conversationList: $("conversation-list"),
  attachmentList: $("attachment-list"),
  uploadButton: $("upload-button"),
  fileInput: $("file-input"),
  urlForm: $("url-form"),
  urlInput: $("url-input"),
  uploadStatus: $("upload-status"),
  uploadName: $("upload-name"),
  uploadProgress: $("upload-progress"),
  messages: $("messages"),
  emptyHint: $("empty-hint"),
  composer: $("composer"),
  question: $("question"),
  webSearch: $("web-search"),
  send: $("send"),
  stop: $("stop"),
  citationPanel: $("citation-panel"),
  citationNumber: $("citation-number"),
  citationSource: $("citation-source"),
  citationSection: $("citation-section"),
  citationPage: $("citation-page"),
  citationExcerpt: $("citation-excerpt"),
  citationClose: $("citation-close"),
  dropOverlay: $("drop-overlay"),
};

const state = {
  language: initialLanguage(),
  conversations: [],
  current: null, // the open conversation: its summary, messages and attachments
  answering: null, // the AbortController of the answer being streamed
  citation: null, // the citation shown in the panel
};
const citationsOf = new WeakMap(); // an answer's element -> its metadata.citations

// ---- interface text ----

function initialLanguage() {
  const saved = localStorage.getItem(LANGUAGE_STORAGE);
  if (saved in STRINGS) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

function t(key, values = {}) {
  const text = STRINGS[state.language][key] ?? STRINGS.en[key];
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name]));
}

function number(value) {
  return value.toLocaleString(state.language === "zh" ? "zh-CN" : "en");
}

function applyLanguage() {
  document.documentElement.lang = state.language === "zh" ? "zh-CN" : "en";
  els.language.value = state.language;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of document.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

// ---- errors and the API key ----

function showError(message) {
  els.errorText.textContent = message;
  els.errorBanner.hidden = false;
}

function clearError() {
  els.errorBanner.hidden = true;
  els.errorText.textContent = "";
}

function handle(error) {
  if (error.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    els.keyForm.hidden = false;
    els.keyInput.focus();
  }
  showError(error.message);
}

function showKeyState() {
  els.forgetKey.hidden = !apiKey();
}

// ---- building elements ----

function element(tag, { className, text, testId, attrs = {} } = {}) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  if (testId) el.dataset.testid = testId;
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  return el;
}

function button(text, testId, onClick, className = "") {
  const el = element("button", { className, text, testId, attrs: { type: "button" } });
  el.addEventListener("click", onClick);
  return el;
}

// ---- the conversation list ----

function titleOf(conversation) {
  return conversation.title || t("untitled");
}

function renderConversations() {
  const list = els.conversationList;
  list.replaceChildren();
  if (state.conversations.length === 0) {
    list.append(element("li", { className: "muted", text: t("noConversations") }));
  }
  for (const conversation of state.conversations) list.append(conversationItem(conversation));
}

function conversationItem(conversation) {
  const item = element("li", { className: "conversation", testId: "conversation-item" });
  item.dataset.id = conversation.id;
  if (state.current?.id === conversation.id) item.setAttribute("aria-current", "true");
  const open = button(titleOf(conversation), "conversation-open", () =>
    openConversation(conversation.id),
  );
  open.className = "conversation-open";
  const actions = element("div", { className: "conversation-actions" });
  actions.append(
    button(t("rename"), "rename", () => startRename(item, open, conversation), "link-button"),
    button(t("delete"), "delete", () => deleteConversation(conversation), "link-button"),
    exportLink(conversation, "markdown", t("exportMarkdown")),
    exportLink(conversation, "json", t("exportJson")),
  );
  item.append(open, actions);
  return item;
}

function exportLink(conversation, format, label) {
  const suffix = format === "markdown" ? "md" : "json";
  const link = element("a", {
    className: "link-button",
    text: label,
    testId: `export-${format}`,
    attrs: {
      href: `/v1/conversations/${conversation.id}/export?format=${format}`,
      download: `${conversation.id}.${suffix}`,
    },
  });
  // A plain link cannot carry the API key; with one, the file is fetched and saved here.
  link.addEventListener("click", async (event) => {
    if (!apiKey()) return;
    event.preventDefault();
    try {
      const url = URL.createObjectURL(await download(link.getAttribute("href")));
      const save = element("a", { attrs: { href: url, download: link.download } });
      save.click();
      setTimeout(() => URL.revokeObjectURL(url), 0);
    } catch (error) {
      handle(error);
    }
  });
  return link;
}

function startRename(item, open, conversation) {
  const input = element("input", {
    className: "rename-input",
    testId: "rename-input",
    attrs: { "aria-label": t("rename") },
  });
  input.value = conversation.title;
  open.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== conversation.title) {
      try {
        await request("PATCH", `/v1/conversations/${conversation.id}`, { title });
        if (state.current?.id === conversation.id) state.current.title = title;
      } catch (error) {
        handle(error);
      }
    }
    await loadConversations();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

async function deleteConversation(conversation) {
  if (!window.confirm(t("confirmDelete", { title: titleOf(conversation) }))) return;
  clearError();
  try {
    await request("DELETE", `/v1/conversations/${conversation.id}`);
    if (state.current?.id === conversation.id) showConversation(null);
    await loadConversations();
  } catch (error) {
    handle(error);
  }
}

async function loadConversations() {
  try {
    state.conversations = (await request("GET", "/v1/conversations")).data;
    renderConversations();
  } catch (error) {
    handle(error);
  }
}

// ---- the open conversation ----

function showConversation(detail) {
  state.current = detail;
  history.replaceState(null, "", detail ? `#${detail.id}` : location.pathname);
  state.citation = null;
  renderCitation();
  renderAttachments();
  renderMessages();
  renderConversations();
}

async function fetchConversation(id) {
  return request("GET", `/v1/conversations/${encodeURIComponent(id)}`);
}

async function openConversation(id) {
  state.answering?.abort();
  clearError();
  try {
    showConversation(await fetchConversation(id));
  } catch (error) {
    handle(error);
  }
}

// The open conversation, made on first need (a question or a source) and titled after it.
async function ensureConversation(title) {
  if (state.current) return state.current.id;
  const created = await request("POST", "/v1/conversations", {
    title: title.trim().slice(0, TITLE_CHARS),
  });
  showConversation({ ...created, messages: [], attachments: [] });
  await loadConversations();
  return created.id;
}

// The open conversation again from the server: its sources always, its messages unless an
// answer is streaming into them.
async function refreshConversation() {
  if (!state.current) return;
  const detail = await fetchConversation(state.current.id);
  state.current = detail;
  renderAttachments();
  if (!state.answering) renderMessages();
}

// ---- sources ----

function renderAttachments() {
  const list = els.attachmentList;
  list.replaceChildren();
  const attachments = state.current?.attachments ?? [];
  if (attachments.length === 0) {
    list.append(element("li", { className: "muted", text: t("noSources") }));
  }
  for (const attachment of attachments) {
    const item = element("li", { className: "attachment", testId: "attachment" });
    item.dataset.id = attachment.id;
    const name = attachment.title || attachment.url || attachment.file_id;
    item.append(
      element("span", { className: "attachment-title", text: name, testId: "attachment-title" }),
      element("span", {
        className: "attachment-tokens",
        text: t("tokens", { tokens: number(attachment.tokens) }),
        testId: "attachment-tokens",
      }),
      button("×", "remove-attachment", () => removeAttachment(attachment), "icon-button"),
    );
    item.lastChild.setAttribute("aria-label", t("remove"));
    list.append(item);
  }
}

async function removeAttachment(attachment) {
  clearError();
  try {
    await request("DELETE", `/v1/conversations/${state.current.id}/attachments/${attachment.id}`);
    await refreshConversation();
  } catch (error) {
    handle(error);
  }
}

function showUploadProgress(name, fraction) {
  els.uploadStatus.hidden = false;
  els.uploadName.textContent = t("uploading", { name });
  els.uploadProgress.value = Math.round(fraction * 100);
}

async function uploadFiles(files) {
  clearError();
  for (const file of files) {
    try {
      showUploadProgress(file.name, 0);
      const uploaded = await uploadFile(file, (fraction) => showUploadProgress(file.name, fraction));
      const id = await ensureConversation(uploaded.title || file.name);
      await request("POST", `/v1/conversations/${id}/attachments`, {
        kind: "file",
        file_id: uploaded.id,
      });
      await refreshConversation();
    } catch (error) {
      handle(error);
    } finally {
      els.uploadStatus.hidden = true;
    }
  }
  await loadConversations();
}

async function attachUrl(event) {
  event.preventDefault();
  const url = els.urlInput.value.trim();
  if (!url) return;
  clearError();
  try {
    const id = await ensureConversation(url);
    await request("POST", `/v1/conversations/${id}/attachments`, { kind: "url", url });
    els.urlInput.value = "";
    await refreshConversation();
    await loadConversations();
  } catch (error) {
    handle(error);
  }
}

// ---- messages ----

function renderMessages() {
  const messages = state.current?.messages ?? [];
  els.messages.replaceChildren(...messages.map(messageElement));
  els.emptyHint.hidden = messages.length > 0;
  const last = els.messages.lastElementChild;
  if (last?.dataset.role === "assistant" && !state.answering) {
    last.querySelector(".answer-meta").append(button(t("regenerate"), "regenerate", regenerate));
  }
  els.messages.scrollTop = els.messages.scrollHeight;
}

function roleLabel(role) {
  return t({ user: "you", assistant: "assistant" }[role] ?? "system");
}

// One message; `html` is the server's rendering, absent while a question is on its way.
function messageElement(message) {
  const article = element("article", { className: `message ${message.role}`, testId: "message" });
  article.dataset.role = message.role;
  if (message.id) article.dataset.messageId = message.id;
  const body = element("div", { className: "message-body", testId: "message-body" });
  if (message.html === undefined) body.textContent = message.content;
  else body.innerHTML = message.html;
  article.append(element("div", { className: "message-role", text: roleLabel(message.role) }), body);
  if (message.role === "assistant") {
    article.append(element("div", { className: "answer-meta" }));
    if (message.metadata) showAnswerMeta(article, message.metadata);
  }
  return article;
}

// The mode badge, the window gauge and how the answer ended, from its metadata (or from a
// stream's start event, which has the same fields).
function showAnswerMeta(article, metadata) {
  citationsOf.set(article, metadata.citations ?? []);
  const meta = article.querySelector(".answer-meta");
  meta.replaceChildren();
  const mode = metadata.mode === "retrieval" ? "retrieval" : "full";
  const badge = element("span", {
    className: `mode-badge ${mode}`,
    text: t(mode === "full" ? "modeFull" : "modeRetrieval"),
    testId: "mode-badge",
  });
  badge.dataset.mode = mode;
  meta.append(badge);
  if (metadata.window_tokens != null && metadata.window_size) {
    meta.append(windowGauge(metadata.window_tokens, metadata.window_size));
  }
  const ending = { abort: "stopped", length: "cutOff" }[metadata.finish_reason];
  if (ending) meta.append(element("span", { className: "finish", text: t(ending), testId: "finish" }));
}

function windowGauge(used, size) {
  const gauge = element("span", { className: "gauge", testId: "window-gauge" });
  const bar = element("span", { className: "gauge-bar" });
  const fill = element("span", { className: "gauge-fill" });
  fill.style.width = `${Math.min(100, (100 * used) / size)}%`;
  bar.append(fill);
  const label = t("windowGauge", { used: number(used), size: number(size) });
  gauge.append(bar, element("span", { className: "gauge-label", text: label }));
  return gauge;
}

function showCitation(link) {
  const article = link.closest(".message");
  const wanted = Number(link.dataset.citation);
  state.citation = (citationsOf.get(article) ?? []).find((c) => c.number === wanted) ?? null;
  renderCitation();
}

function renderCitation() {
  const citation = state.citation;
  els.citationPanel.hidden = !citation;
  if (!citation) return;
  els.citationNumber.textContent = t("citation", { number: citation.number });
  els.citationSource.textContent = citation.source_title || citation.source_id;
  els.citationSection.textContent = citation.section_title ?? "—";
  els.citationPage.textContent = citation.page ?? "—";
  els.citationExcerpt.textContent = citation.excerpt ?? "";
}

// ---- answering ----

function setAnswering(controller) {
  state.answering = controller;
  els.stop.hidden = !controller;
  els.send.disabled = Boolean(controller);
  els.messages.querySelector('[data-testid="regenerate"]')?.remove();
}

// Streams one answer into a new bubble: `question` is shown at once (null to regenerate).
async function answer(conversationId, body, question) {
  const controller = new AbortController();
  setAnswering(controller);
  if (question !== null) els.messages.append(messageElement({ role: "user", content: question }));
  const bubble = messageElement({ role: "assistant", content: "…" });
  bubble.classList.add("streaming");
  els.messages.append(bubble);
  els.emptyHint.hidden = true;
  let failed = false;
  try {
    for await (const event of streamAnswer(conversationId, body, controller.signal)) {
      if (event.type === "start") showAnswerMeta(bubble, event);
      else if (event.type === "delta") {
        bubble.querySelector(".message-body").innerHTML = event.html;
        els.messages.scrollTop = els.messages.scrollHeight;
      } else if (event.type === "error") {
        failed = true;
        showError(event.error.message);
      }
    }
  } catch (error) {
    failed = error.name !== "AbortError";
    handle(error);
  } finally {
    setAnswering(null);
  }
  if (failed && question !== null && !els.question.value) els.question.value = question;
  await settle(conversationId, controller.signal.aborted);
}

// The conversations as the server saved them, once an answer ended (a stopped one is saved
// just after the stop). The open one may be another by then.
async function settle(conversationId, stopped) {
  try {
    for (let poll = 0; stopped && poll < ABORT_SAVE_POLLS; poll += 1) {
      const detail = await fetchConversation(conversationId);
      if (detail.messages.at(-1)?.role === "assistant") break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    await refreshConversation();
    await loadConversations();
  } catch (error) {
    handle(error);
  }
}

async function ask(event) {
  event.preventDefault();
  const question = els.question.value.trim();
  if (!question || state.answering) return;
  clearError();
  try {
    const id = await ensureConversation(question);
    els.question.value = "";
    await answer(id, { question, web_search: els.webSearch.checked }, question);
  } catch (error) {
    handle(error);
  }
}

async function regenerate() {
  if (!state.current || state.answering) return;
  clearError();
  els.messages.lastElementChild?.remove();
  await answer(state.current.id, { regenerate: true, web_search: els.webSearch.checked }, null);
}

// ---- wiring ----

function wireDragAndDrop() {
  const carriesFiles = (event) => event.dataTransfer?.types.includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    els.dropOverlay.hidden = false;
  });
  els.dropOverlay.addEventListener("dragleave", () => {
    els.dropOverlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    els.dropOverlay.hidden = true;
    uploadFiles([...event.dataTransfer.files]);
  });
}

function wire() {
  els.language.addEventListener("change", () => {
    state.language = els.language.value;
    localStorage.setItem(LANGUAGE_STORAGE, state.language);
    applyLanguage();
    renderConversations();
    renderAttachments();
    renderCitation();
    if (!state.answering) renderMessages();
  });
  els.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    saveApiKey(els.keyInput.value.trim());
    els.keyInput.value = "";
    els.keyForm.hidden = true;
    clearError();
    start();
  });
  els.forgetKey.addEventListener("click", () => {
    saveApiKey("");
    location.reload();
  });
  els.errorClose.addEventListener("click", clearError);
  els.newChat.addEventListener("click", () => {
    state.answering?.abort();
    clearError();
    showConversation(null);
    els.question.focus();
  });
  els.uploadButton.addEventListener("click", () => els.fileInput.click());
  els.fileInput.addEventListener("change", () => {
    uploadFiles([...els.fileInput.files]);
    els.fileInput.value = "";
  });
  els.urlForm.addEventListener("submit", attachUrl);
  els.composer.addEventListener("submit", ask);
  els.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.composer.requestSubmit();
    }
  });
  els.stop.addEventListener("click", () => state.answering?.abort());
  els.messages.addEventListener("click", (event) => {
    const link = event.target.closest("a.citation");
    if (!link) return;
    event.preventDefault();
    showCitation(link);
  });
  els.citationClose.addEventListener("click", () => {
    state.citation = null;
    renderCitation();
  });
  wireDragAndDrop();
}

// Loads the model's name and the conversations; reopens the one named in the address.
async function start() {
  showKeyState();
  try {
    const models = await request("GET", "/v1/models");
    els.modelName.textContent = models.data[0]?.id ?? "";
  } catch (error) {
    handle(error);
    return;
  }
  await loadConversations();
  const id = decodeURIComponent(location.hash.slice(1));
  if (id) await openConversation(id);
  else showConversation(null);
}

applyLanguage();
wire();
start();
