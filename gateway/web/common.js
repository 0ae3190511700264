// Helpers shared by the pages. Every value shown goes in with textContent (never
// innerHTML): SIP display names, reasons and message text are data, not markup.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function health(alive, text) {
  return el("span", {class: alive ? "ok" : "down"}, text);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}

function callLink(callId, text) {
  return el("a", {href: "/call/" + encodeURIComponent(callId)}, text);
}

function localTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "-";
}
