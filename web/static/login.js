// Login form: shown when the API answers 401; POSTs the token once to /login, which sets an
// HttpOnly session cookie (the token itself is never stored by the page).
const NAME_KEY = "binormal-login-name";

export class Login {
  /** @param {{onLogin: Function}} handlers */
  constructor(handlers) {
    this.h = handlers;
    this.form = document.getElementById("login");
    this.input = document.getElementById("login-token");
    this.error = document.getElementById("login-error");
    this.logoutBtn = document.getElementById("logout");
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.submit(); });
    this.logoutBtn.addEventListener("click", () => this.logout());
    this.showName(sessionStorage.getItem(NAME_KEY));
  }

  get shown() { return !this.form.hidden; }

  show(message = "") {
    this.error.textContent = message;
    this.form.hidden = false;
    this.input.focus();
  }

  showName(name) {
    this.logoutBtn.hidden = !name;
    document.getElementById("logout-name").textContent = name ? `(${name})` : "";
  }

  async submit() {
    const token = this.input.value.trim();
    if (!token) return;
    let resp;
    try {
      resp = await fetch("/login", {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token }),
      });
    } catch {
      this.error.textContent = "the server cannot be reached";
      return;
    }
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      this.error.textContent = typeof body.error === "string" ? body.error : `login failed (${resp.status})`;
      return;
    }
    this.input.value = "";
    this.form.hidden = true;
    sessionStorage.setItem(NAME_KEY, String(body.name));
    this.showName(String(body.name));
    this.h.onLogin(body);
  }

  async logout() {
    sessionStorage.removeItem(NAME_KEY);
    this.showName(null);
    try { await fetch("/logout", { method: "POST" }); } catch { /* the cookie expires anyway */ }
    location.reload();
  }
}

/** Whether the API wants a login: GET /api/scopes?limit=1 answers 401. */
export async function needsLogin() {
  try {
    const resp = await fetch("/api/scopes?limit=1", { headers: { Accept: "application/json" } });
    return resp.status === 401;
  } catch {
    return false; // server down: the socket's reconnect loop handles that
  }
}
