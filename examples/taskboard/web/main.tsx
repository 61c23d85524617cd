// The task board page: one UnisockClient, one WebSocket, for every component on the page.
import { createRoot } from "react-dom/client";
import { createElement as h, useCallback, useEffect, useMemo, useRef, useState } from "react";
import { UnisockClient, type UnisockEvent, type Resync } from "@unisock/client";
import { UnisockProvider, useChannel, useUnisock } from "@unisock/client/react";

type Status = "todo" | "in_progress" | "done";
const STATUSES: Status[] = ["todo", "in_progress", "done"];
const LABELS: Record<Status, string> = { todo: "To do", in_progress: "In progress", done: "Done" };
const STEPS: Record<string, string> = {
  create_task: "Create a task",
  start_task: "Start a task",
  finish_task: "Finish a task",
  send_feedback: "Send feedback",
};

interface Task {
  task_id: string;
  title: string;
  status: Status;
  priority: number;
  assignee: string | null;
  progress: number;
  version: number;
  coalesced?: number;
}
interface Snapshot {
  tasks: Task[];
  tutorial: string[];
  forms: number;
}
interface Session {
  user: string;
  tenant: string;
  users: string[];
  token: string;
}

const params = new URLSearchParams(location.search);
const sid = sessionStorage.getItem("sid") ?? crypto.getRandomValues(new Uint32Array(2)).join("");
sessionStorage.setItem("sid", sid);

async function login(user: string): Promise<Session> {
  const response = await fetch(`/api/token?user=${encodeURIComponent(user)}&sid=${sid}`);
  if (!response.ok) throw new Error(`login failed: ${response.status}`);
  return (await response.json()) as Session;
}

function shortId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function uuid(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// -- data -------------------------------------------------------------------------------------

function useSnapshot(session: Session): [Snapshot | undefined, () => void] {
  const [snapshot, setSnapshot] = useState<Snapshot>();
  const reload = useCallback(() => {
    fetch("/api/snapshot", { headers: { Authorization: `Bearer ${session.token}` } })
      .then((r) => (r.ok ? (r.json() as Promise<Snapshot>) : undefined))
      .then((s) => s && setSnapshot(s))
      .catch(() => undefined);
  }, [session]);
  useEffect(reload, [reload]);
  return [snapshot, reload];
}

/** Debounced: a reconnect after a restart resyncs every task channel at once. */
function useDebounced(fn: () => void, ms: number): () => void {
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  return useCallback(() => {
    clearTimeout(timer.current);
    timer.current = setTimeout(fn, ms);
  }, [fn, ms]);
}

// -- components -------------------------------------------------------------------------------

function Board(props: { session: Session; client: UnisockClient; snapshot?: Snapshot; onResync: () => void }) {
  const { session, client } = props;
  const [tasks, setTasks] = useState<Record<string, Task>>({});
  useEffect(() => {
    if (props.snapshot) setTasks(Object.fromEntries(props.snapshot.tasks.map((t) => [t.task_id, t])));
  }, [props.snapshot]);
  useChannel("tasks.>", {
    onEvent: (e: UnisockEvent) =>
      setTasks((current) => {
        const data = e.data as Record<string, unknown>;
        const id = String(data["task_id"]);
        if (e.event === "task.created") return { ...current, [id]: { progress: 0, version: 1, ...(data as object) } as Task };
        const task = current[id];
        const version = Number(data["version"]);
        if (!task || version <= task.version) return current;
        const coalesced = (task.coalesced ?? 0) + (e.coalesced?.length ?? 0);
        return { ...current, [id]: { ...task, ...(data["changes"] as object), version, coalesced } };
      }),
    onResync: props.onResync,
  });
  const create = (form: HTMLFormElement) => {
    const title = (new FormData(form).get("title") as string).trim();
    const priority = Number(new FormData(form).get("priority"));
    if (!title) return;
    const id = shortId();
    const data = { task_id: id, title, status: "todo", priority, assignee: session.user, created_by: session.user, created_at: Date.now() };
    client
      .publish(`tasks.${id}`, "task.created", data, { attrs: { status: "todo", priority }, key: `task-${id}` })
      .catch((error: Error) => console.error(error.message));
    form.reset();
  };
  const move = (task: Task, status: Status) => {
    const version = task.version + 1;
    const data = { task_id: task.task_id, version, changes: { status, progress: status === "done" ? 100 : task.progress }, updated_by: session.user, updated_at: Date.now() };
    client
      .publish(`tasks.${task.task_id}`, "task.updated", data, {
        attrs: { status, prev_status: task.status, priority: task.priority },
        key: `task-${task.task_id}`,
      })
      .catch((error: Error) => console.error(error.message));
  };
  const rapid = (task: Task) =>
    void fetch(`/api/simulate?task=${task.task_id}`, { headers: { Authorization: `Bearer ${session.token}` } });
  const list = Object.values(tasks);
  return h("section", { "data-testid": "board" }, [
    h("h2", { key: "h" }, "Tasks"),
    h(
      "form",
      { key: "f", className: "new-task", "data-testid": "new-task", onSubmit: (e: Event) => (e.preventDefault(), create(e.currentTarget as HTMLFormElement)) },
      [
        h("input", { key: "t", name: "title", placeholder: "New task title", "aria-label": "title" }),
        h("select", { key: "p", name: "priority", defaultValue: "2" }, [0, 1, 2, 3, 4].map((p) => h("option", { key: p, value: p }, `P${p}`))),
        h("button", { key: "b", type: "submit" }, "Add task"),
      ],
    ),
    h(
      "div",
      { key: "c", className: "columns" },
      STATUSES.map((status) =>
        h("div", { key: status, className: "column", "data-testid": `column-${status}` }, [
          h("h3", { key: "h" }, LABELS[status]),
          ...list
            .filter((t) => t.status === status)
            .map((task) =>
              h("div", { key: task.task_id, className: "card", "data-testid": "task" }, [
                h("div", { key: "t", className: "title" }, task.title),
                h("div", { key: "m", className: "meta" }, `P${task.priority} · ${task.assignee ?? "unassigned"} · v${task.version}`),
                h("div", { key: "b", className: "bar" }, h("div", { style: { width: `${task.progress}%` } })),
                task.coalesced ? h("span", { key: "c", className: "badge", title: "updates merged on a slow connection" }, `${task.coalesced} coalesced`) : null,
                h("div", { key: "a" }, [
                  status !== "in_progress" && status !== "done" ? h("button", { key: "s", onClick: () => move(task, "in_progress") }, "Start") : null,
                  status !== "done" ? h("button", { key: "d", onClick: () => move(task, "done") }, "Done") : null,
                  h("button", { key: "r", onClick: () => rapid(task) }, "Rapid updates"),
                ]),
              ]),
            ),
        ]),
      ),
    ),
  ]);
}

/** Counts by status from a filtered subscription: only creations and status changes arrive. */
function StatusCounts(props: { snapshot?: Snapshot; onResync: () => void }) {
  const [counts, setCounts] = useState<Record<string, number>>({});
  const [received, setReceived] = useState(0);
  useEffect(() => {
    const initial: Record<string, number> = {};
    for (const task of props.snapshot?.tasks ?? []) initial[task.status] = (initial[task.status] ?? 0) + 1;
    setCounts(initial);
  }, [props.snapshot]);
  const filter = useMemo(() => ({ exists: "status" }), []);
  useChannel(
    "tasks.*",
    {
      onEvent: (e) => {
        setReceived((n) => n + 1);
        const attrs = e.attrs ?? {};
        setCounts((c) => {
          const next = { ...c };
          if (typeof attrs["prev_status"] === "string") next[attrs["prev_status"]] = (next[attrs["prev_status"]] ?? 1) - 1;
          if (typeof attrs["status"] === "string") next[attrs["status"]] = (next[attrs["status"]] ?? 0) + 1;
          return next;
        });
      },
      onResync: props.onResync,
    },
    filter,
  );
  return h("div", { "data-testid": "counts" }, [
    h("h2", { key: "h" }, "Tasks by status"),
    h("div", { key: "c", className: "counts" }, STATUSES.map((s) => h("div", { key: s }, [h("b", { key: "n" }, counts[s] ?? 0), LABELS[s]]))),
    h("div", { key: "r", className: "meta" }, `status changes received: ${received} (filtered by the server)`),
  ]);
}

function ActivityFeed() {
  const [items, setItems] = useState<string[]>([]);
  const add = (e: UnisockEvent) => {
    const d = e.data as Record<string, unknown>;
    const who = e.publisher ?? "?";
    let text = `${who}: ${e.event}`;
    if (e.event === "task.created") text = `${who} created “${String(d["title"])}”`;
    else if (e.event === "task.updated" && e.attrs?.["status"]) text = `${who} moved ${String(d["task_id"])} to ${String(e.attrs["status"])}`;
    else if (e.event === "form.submitted") text = `${who} sent feedback`;
    setItems((list) => [text, ...list].slice(0, 15));
  };
  useChannel("tasks.>", { onEvent: add });
  useChannel("forms.>", { onEvent: add });
  return h("div", { "data-testid": "activity" }, [
    h("h2", { key: "h" }, "Activity"),
    h("ul", { key: "l", className: "feed" }, items.map((text, i) => h("li", { key: `${items.length - i}` }, text))),
  ]);
}

function Tutorial(props: { snapshot?: Snapshot }) {
  const [done, setDone] = useState<string[]>([]);
  useEffect(() => setDone(props.snapshot?.tutorial ?? []), [props.snapshot]);
  useChannel("$me.tutorial", { onEvent: (e) => setDone((e.data as { completed: string[] }).completed) });
  return h("div", { "data-testid": "tutorial" }, [
    h("h2", { key: "h" }, `Your tutorial (${done.length}/${Object.keys(STEPS).length})`),
    h("ul", { key: "l", className: "steps" }, Object.entries(STEPS).map(([step, label]) => h("li", { key: step, className: done.includes(step) ? "done" : "" }, label))),
  ]);
}

function FeedbackForm(props: { session: Session; client: UnisockClient }) {
  const [status, setStatus] = useState("");
  const submit = (form: HTMLFormElement) => {
    const fields = new FormData(form);
    // One message_id per submission: a retry after a lost ack is recognised (UNI-PUB-38).
    const id = uuid();
    const data = {
      form_id: "feedback",
      submission_id: id.slice(0, 32),
      submitted_by: props.session.user,
      submitted_at: Date.now(),
      fields: { message: String(fields.get("message")), rating: Number(fields.get("rating")) },
    };
    setStatus(props.client.state === "open" ? "Sending…" : "Waiting for the connection…");
    props.client
      .publish("forms.feedback", "form.submitted", data, { messageId: id })
      .then((ack) => setStatus(ack.duplicate ? `Received (already recorded at #${ack.offset})` : `Received as #${ack.offset}`))
      .catch((error: Error) => setStatus(`Not sent: ${error.message}`));
    form.reset();
  };
  return h("div", { "data-testid": "feedback" }, [
    h("h2", { key: "h" }, "Feedback"),
    h("form", { key: "f", className: "feedback", onSubmit: (e: Event) => (e.preventDefault(), submit(e.currentTarget as HTMLFormElement)) }, [
      h("textarea", { key: "m", name: "message", placeholder: "What should we improve?", "aria-label": "message" }),
      h("select", { key: "r", name: "rating", defaultValue: "4" }, [1, 2, 3, 4, 5].map((r) => h("option", { key: r, value: r }, `${r} ★`))),
      h("button", { key: "b", type: "submit" }, "Send"),
    ]),
    h("div", { key: "s", "data-testid": "feedback-status" }, status),
  ]);
}

function ConnectionPanel() {
  const c = useUnisock();
  const close = c.lastClose ? `${c.lastClose.code} ${c.lastClose.reason}${c.lastClose.superseded ? " (opened elsewhere)" : ""}` : "—";
  return h("div", { "data-testid": "connection" }, [
    h("h2", { key: "h" }, "Connection"),
    h("table", { key: "t" }, h("tbody", null, [
      row("state", h("span", { className: `state ${c.state}`, "data-testid": "state" }, c.state)),
      row("connection", c.connectionId?.slice(0, 12) ?? "—"),
      row("reconnects", h("span", { "data-testid": "reconnects" }, c.reconnects)),
      row("backoff", c.nextDelayMs !== undefined ? `attempt ${c.attempt}, next in ${c.nextDelayMs} ms` : `attempt ${c.attempt}`),
      row("last close", close),
      row("gaps / resyncs", h("span", { "data-testid": "resyncs" }, c.resyncs)),
      row("round trip", c.rttMs !== undefined ? `${c.rttMs} ms` : "—"),
    ])),
    h("table", { key: "p", "data-testid": "positions" }, h("tbody", null, Object.entries(c.positions).map(([channel, p]) => row(channel, `${p.epoch.slice(0, 8)} @ ${p.offset}`)))),
  ]);
}

function row(label: string, value: unknown) {
  return h("tr", { key: label }, [h("th", { key: "l" }, label), h("td", { key: "v" }, value as string)]);
}

function App(props: { session: Session; client: UnisockClient }) {
  const [snapshot, reload] = useSnapshot(props.session);
  const resync = useDebounced(reload, 200);
  return h("div", null, [
    h("header", { key: "h" }, [
      h("strong", { key: "t" }, "Task board"),
      h("span", { key: "n", className: "tenant", "data-testid": "tenant" }, props.session.tenant),
      h("span", { key: "s", className: "spacer" }),
      h("span", { key: "u", "data-testid": "user" }, props.session.user),
    ]),
    h("main", { key: "m" }, [
      h(Board, { key: "b", session: props.session, client: props.client, snapshot, onResync: resync }),
      h("aside", { key: "a" }, [
        h(StatusCounts, { key: "c", snapshot, onResync: resync }),
        h(ActivityFeed, { key: "f" }),
        h(Tutorial, { key: "t", snapshot }),
        h(FeedbackForm, { key: "fb", session: props.session, client: props.client }),
        h(ConnectionPanel, { key: "cp" }),
      ]),
    ]),
  ]);
}

async function start(user: string): Promise<void> {
  const session = await login(user);
  const url = params.get("ws") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const client = new UnisockClient({
    url,
    // Called before every connection and on token_expiring: the page's login session.
    token: async () => {
      const fresh = await login(user);
      session.token = fresh.token;
      return fresh.token;
    },
    measureRtt: true,
  });
  (window as unknown as { unisock: UnisockClient }).unisock = client;
  client.connect().catch(() => undefined);
  root.render(h(UnisockProvider, { client }, h(App, { session, client })));
}

function Login() {
  return h("div", { className: "login" }, [
    h("h2", { key: "h" }, "Sign in to the demo"),
    h("p", { key: "p" }, "Tenant acme: alice, bob. Tenant globex: carol, dave."),
    ...["alice", "bob", "carol", "dave"].map((u) => h("button", { key: u, onClick: () => void start(u) }, u)),
  ]);
}

const root = createRoot(document.getElementById("root") as HTMLElement);
const preset = params.get("user");
if (preset) void start(preset);
else root.render(h(Login));
