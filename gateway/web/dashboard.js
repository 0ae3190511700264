// The dashboard: one render of /api/dashboard, then one per server-sent event on /events.
"use strict";

function party(address) {
  // The From/To as sent, without the dialog's tag (noise on a dashboard).
  return address ? address.replace(/;tag=[^;>]*$/, "") : "-";
}

function render(doc) {
  const st = doc.status, sys = st.system;
  document.getElementById("identity").textContent =
    `${sys.host_name}.${sys.domain} (cluster ${sys.cluster_fqdn}) v${sys.version}` +
    (sys.draining ? " draining" : "");
  document.getElementById("uptime").textContent =
    `up ${ago(sys.uptime)} since ${localTime(sys.started_at)}`;
  fill(document.querySelector("#sides tbody"), [st.microsoft_side, st.video_side].map(s =>
    el("tr", {}, el("td", {}, s.name), el("td", {class: "mono"}, s.address),
       el("td", {}, health(s.alive, s.status)))));
  const zoneRows = [];
  for (const z of st.zones) {
    zoneRows.push(el("tr", {}, el("td", {}, z.name), el("td", {}, z.type),
                     el("td", {}, health(z.alive, z.status))));
    for (const p of z.peers) {
      zoneRows.push(el("tr", {}, el("td", {}, ""), el("td", {class: "mono"}, p.address),
                       el("td", {}, health(p.alive, p.status))));
    }
  }
  fill(document.querySelector("#zones tbody"), zoneRows);
  fill(document.querySelector("#turn tbody"), st.turn_servers.length ? st.turn_servers.map(t =>
    el("tr", {}, el("td", {class: "mono"}, `${t.address}:${t.port}`),
       el("td", {}, health(t.alive, t.status)), el("td", {}, `${t.allocations} allocations`)))
    : [el("tr", {}, el("td", {}, "none configured"))]);
  const pool = st.port_pool;
  document.getElementById("pool").textContent =
    `${pool.in_use} of ${pool.total} ports in use (${pool.first}-${pool.last}), ` +
    `${pool.free} free, ${pool.calls_refused} calls refused for lack of ports`;
  document.getElementById("pool-bar").style.width =
    (pool.total ? Math.round(100 * pool.in_use / pool.total) : 0) + "%";
  document.getElementById("capacity").textContent =
    `${st.capacity.active} of ${st.capacity.max} calls`;

  fill(document.querySelector("#active-calls tbody"), st.calls.map(c => {
    const legs = el("td", {class: "mono"}), codecs = el("td", {}), packets = el("td", {});
    for (const leg of c.legs) {
      legs.append(el("div", {}, `${leg.side} ${leg.remote} ${leg.dialog_state}`));
      for (const m of leg.media) {
        packets.append(el("div", {class: "pkts", "data-side": leg.side, "data-kind": m.kind,
                                  "data-in": m.packets_in, "data-out": m.packets_out},
                          `${leg.side} ${m.kind}: ${m.packets_in} / ${m.packets_out}`));
      }
    }
    for (const [side, list] of Object.entries(c.codecs || {})) {
      codecs.append(el("div", {}, `${side}: ${list.join(", ") || "-"}`));
    }
    return el("tr", {"data-call-id": c.call_id},
      el("td", {class: "mono"}, callLink(c.call_id, c.call_id.slice(0, 18))),
      el("td", {class: "from"}, party(c.from)), el("td", {}, party(c.to)),
      el("td", {}, c.state), el("td", {}, ago(c.duration)), legs, codecs,
      el("td", {class: "mono"}, c.ice || "-"), packets);
  }));
  if (!st.calls.length) {
    fill(document.querySelector("#active-calls tbody"),
         [el("tr", {}, el("td", {colspan: "9"}, "no active calls"))]);
  }
  fill(document.querySelector("#recent-calls tbody"), doc.recent.map(c =>
    el("tr", {"data-call-id": c.call_id},
       el("td", {}, localTime(c.started_at)), el("td", {class: "from"}, party(c.from)),
       el("td", {}, party(c.to)),
       el("td", {}, health(c.result === "completed", c.result)), el("td", {}, c.reason || ""),
       el("td", {}, callLink(c.call_id, "ladder")))));
  const refusals = Object.entries(doc.refusals);
  fill(document.querySelector("#refusals tbody"), refusals.length ? refusals.map(([r, n]) =>
    el("tr", {"data-reason": r}, el("td", {}, r), el("td", {}, String(n))))
    : [el("tr", {}, el("td", {}, "none"))]);
}

async function start() {
  const live = document.getElementById("live");
  try {
    const response = await fetch("/api/dashboard", {cache: "no-store"});
    render(await response.json());
  } catch (error) {
    live.textContent = "cannot read /api/dashboard";
  }
  const events = new EventSource("/events");
  events.onmessage = event => {
    live.textContent = "live " + new Date().toLocaleTimeString();
    render(JSON.parse(event.data));
  };
  events.onerror = () => { live.textContent = "reconnecting…"; };
}

start();
