// Entry point: wire the two views and switch between them by the URL fragment.
//   #send (default)    the send view
//   #receive           the receive view
//   #receive=CODE      the receive view with CODE filled in (the link a sender shares). The fragment never
//                      reaches the relay, the page removes it from the address bar and history at once, and it
//                      only joins the room when the person presses Connect.
//   #42-ocean-table    the same, in the bare form of docs/design/protocol-v2.md (a code: digits, then words).

import { prefillCode, setUpReceiveView, showBadLink } from "./receive-view.js";
import { setUpSendView } from "./send-view.js";
import { slowCrypto } from "./sealing.js";

const BARE_CODE_RE = /^[0-9]{1,8}-/;

function show(view) {
  const receiving = view === "receive";
  document.getElementById("send-view").hidden = receiving;
  document.getElementById("receive-view").hidden = !receiving;
  const current = (tab, on) => (on ? tab.setAttribute("aria-current", "page") : tab.removeAttribute("aria-current"));
  current(document.getElementById("tab-send"), !receiving);
  current(document.getElementById("tab-receive"), receiving);
}

/** The code in a "#receive=CODE" fragment, or null when its percent-encoding is broken ("%E0%A4%A"). */
export function codeFromFragment(fragment) {
  try {
    return decodeURIComponent(fragment.slice("receive=".length));
  } catch {
    return null;
  }
}

function route() {
  const fragment = window.location.hash.slice(1);
  const bare = BARE_CODE_RE.test(fragment);
  if (fragment.startsWith("receive=") || bare) {
    const code = codeFromFragment(bare ? `receive=${fragment}` : fragment);
    // Keep the code out of the address bar and history once it is in the form.
    history.replaceState(null, "", "#receive");
    show("receive");
    if (code === null) {
      showBadLink();
      document.getElementById("receive-code").focus();
    } else {
      prefillCode(code);
      document.getElementById("receive-connect").focus(); // Enter now connects
    }
  } else {
    const receiving = fragment === "receive";
    show(receiving ? "receive" : "send");
    if (receiving) document.getElementById("receive-code").focus();
  }
}

setUpSendView({
  showSend: () => {
    history.replaceState(null, "", "#send");
    show("send");
  },
});
setUpReceiveView();
// Without WebCrypto (a plain-http origin other than localhost) the same encryption runs on @noble/ciphers.
document.getElementById("crypto-note").hidden = !slowCrypto();
window.addEventListener("hashchange", route);
route();
