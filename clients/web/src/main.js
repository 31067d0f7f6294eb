// Entry point: wire the two views and switch between them by the URL fragment.
//   #send (default)    the send view
//   #receive           the receive view
//   #receive=CODE      the receive view with CODE filled in (the link a sender shares). The fragment never
//                      reaches the relay, and the page only joins the room when the person presses Connect.

import { prefillCode, setUpReceiveView } from "./receive-view.js";
import { setUpSendView } from "./send-view.js";

function show(view) {
  const receiving = view === "receive";
  document.getElementById("send-view").hidden = receiving;
  document.getElementById("receive-view").hidden = !receiving;
  document.getElementById("tab-send").setAttribute("aria-current", receiving ? "false" : "page");
  document.getElementById("tab-receive").setAttribute("aria-current", receiving ? "page" : "false");
}

function route() {
  const fragment = window.location.hash.slice(1);
  if (fragment.startsWith("receive=")) {
    prefillCode(decodeURIComponent(fragment.slice("receive=".length)));
    // Keep the code out of the address bar and history once it is in the form.
    history.replaceState(null, "", "#receive");
    show("receive");
  } else {
    show(fragment === "receive" ? "receive" : "send");
  }
}

setUpSendView();
setUpReceiveView();
window.addEventListener("hashchange", route);
route();
