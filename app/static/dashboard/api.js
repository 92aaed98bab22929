// Calls to this server's JSON API with the saved API key; a non-2xx reply throws an ApiError that carries the
// API's own message ({"error": {"code", "message"}}).

const KEY = "textclf.apiKey";

export const getKey = () => localStorage.getItem(KEY) || "";

export function setKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (reply.status === 204) return null;
  const data = await reply.json().catch(() => null);
  if (!reply.ok) {
    const error = data && data.error;
    throw new ApiError(reply.status, error ? error.code : "http_error",
                       error ? error.message : `The server answered HTTP ${reply.status}.`);
  }
  return data;
}
