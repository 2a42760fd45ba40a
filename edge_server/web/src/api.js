// Calls to the edge's HTTP API, with the bearer token when the server asks for one.
//
// Why the token lives in sessionStorage and arrives in the URL's fragment (#token=...): a fragment is never sent
// to the server nor written to its access log, and sessionStorage ends with the tab.

const KEY = "splitedge-token";

export function takeTokenFromUrl() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export function setToken(token) { sessionStorage.setItem(KEY, token); }

export class Unauthorized extends Error {}

/** JSON (or bytes, with `binary`) from the API; throws Unauthorized on 401/403, Error with the server's text else. */
export async function api(path, { method = "GET", body = undefined, binary = false } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 || response.status === 403) throw new Unauthorized(await response.text());
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return binary ? new Uint8Array(await response.arrayBuffer()) : response.json();
}
