// The call page: the SIP ladder of both legs (Microsoft peer | gateway | video peer), the
// message under a clicked arrow with its SDP before/after rewriting, the media timeline.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const X = {microsoft: 130, gateway: 420, video: 710};
const ROW = 34, TOP = 50;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(message, arrow) {
  for (const a of document.querySelectorAll("#ladder .arrow.selected")) {
    a.classList.remove("selected");
  }
  arrow.classList.add("selected");
  const way = message.sent ? "gateway \u2192 " + message.side : message.side + " \u2192 gateway";
  document.getElementById("detail-title").textContent =
    `${message.label} (${way}, ${message.transport} ${message.remote}, ${message.at})`;
  document.getElementById("message-text").textContent = message.text;
  document.getElementById("sdp-title").textContent = message.sdp === null ? "SDP: none"
    : message.sent ? "SDP sent (after rewriting)" : "SDP received (before rewriting)";
  document.getElementById("sdp").textContent = message.sdp || "";
  document.getElementById("sdp-other-title").textContent = message.sdp === null ? ""
    : message.sent ? "from the other leg (before rewriting)"
                   : "sent on the other leg (after rewriting)";
  document.getElementById("sdp-other").textContent = message.sdp_other || "";
}

function ladder(doc) {
  const box = document.getElementById("ladder");
  const height = TOP + ROW * (doc.messages.length + 1);
  box.setAttribute("width", 760);
  box.setAttribute("height", height);
  box.replaceChildren();
  for (const [name, title] of [["microsoft", "Microsoft peer"], ["gateway", "gateway"],
                               ["video", "video peer"]]) {
    box.append(svg("text", {x: X[name], y: 20, "text-anchor": "middle", class: "head"}, title));
    box.append(svg("line", {x1: X[name], y1: 30, x2: X[name], y2: height, class: "column"}));
  }
  const t0 = doc.messages.length ? doc.messages[0].t : 0;
  doc.messages.forEach((m, i) => {
    const y = TOP + ROW * i + 14;
    const peer = X[m.side], gw = X.gateway;
    const [from, to] = m.sent ? [gw, peer] : [peer, gw];
    const g = svg("g", {class: "arrow" + (/^\d/.test(m.label) ? " response" : ""),
                        "data-label": m.label, "data-side": m.side,
                        "data-sent": String(m.sent), "data-seq": String(m.seq)});
    g.append(svg("rect", {x: Math.min(from, to), y: y - 16, width: Math.abs(to - from),
                          height: ROW - 4, class: "hit"}));
    g.append(svg("line", {x1: from, y1: y, x2: to, y2: y}));
    const dir = to > from ? -1 : 1;
    g.append(svg("polygon", {points: `${to},${y} ${to + dir * 9},${y - 4} ${to + dir * 9},${y + 4}`,
                             fill: "#1d3557"}));
    g.append(svg("text", {x: (from + to) / 2, y: y - 4, "text-anchor": "middle", class: "label"},
                 m.label + (m.sdp !== null ? " (SDP)" : "")));
    g.append(svg("text", {x: 4, y: y + 4, class: "time"},
                 `+${((m.t - t0) * 1000).toFixed(0)} ms`));
    g.addEventListener("click", () => show(m, g));
    box.append(g);
  });
}

async function start() {
  const callId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const base = "/call/" + encodeURIComponent(callId);
  document.getElementById("pcap").setAttribute("href", base + "/pcap");
  document.getElementById("call-title").textContent = "Call " + callId;
  const response = await fetch("/api/call/" + encodeURIComponent(callId), {cache: "no-store"});
  if (!response.ok) {
    document.getElementById("call-title").textContent = "No such call: " + callId;
    return;
  }
  const doc = await response.json();
  const rows = [["from", doc.from], ["to", doc.to], ["started", doc.started_at],
                ["came in from", doc.inbound_side + " side"],
                ["outcome", doc.active ? `active (${doc.result})` : doc.result],
                ["reason", doc.reason || "-"], ["legs (Call-IDs)", doc.legs.join("  |  ")],
                ["SIP messages", `${doc.messages.length} kept` +
                  (doc.messages_dropped ? `, ${doc.messages_dropped} older dropped` : "")],
                ["media packets", `${doc.packets} in the pcap (the first ones, received and sent)`]];
  fill(document.querySelector("#summary tbody"), rows.map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", {class: "mono"}, v))));
  ladder(doc);
  fill(document.getElementById("timeline"), doc.timeline.map(e =>
    el("li", {}, el("span", {class: "mono"}, localTime(e.at) + " "), e.text)));
}

start();
