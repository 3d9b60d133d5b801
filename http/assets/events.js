// The one `/api/events` stream of the page, shared by every view. The browser reconnects by
// itself and sends Last-Event-ID, so the server replays what was missed; after any (re)connect,
// or when the server says the gap is too old (`reset`), the views are told to reload their
// state (`resync`) so they can never drift from the server's.

const NAMES = ['call.started', 'call.ringing', 'call.answered', 'call.ended', 'alarm.raised', 'alarm.cleared'];
/** Handlers by event name, plus 'resync' and 'status'. */
const handlers = new Map();
let source = null;
let status = 'connecting';
/** When the browser gives up (the server answered something other than a stream), a new
 * EventSource is made after this delay. */
const RETRY_MS = 5000;

function emit(name, data) {
  for (const fn of handlers.get(name) || []) {
    try {
      fn(data);
    } catch (err) {
      // One broken view must not stop the others from getting the event.
      setTimeout(() => {
        throw err;
      });
    }
  }
}

function setStatus(next) {
  if (next === status) return;
  status = next;
  emit('status', status);
}

/** Calls `fn(data)` on every event named `name` (or 'resync', 'status'). */
export function on(name, fn) {
  if (!handlers.has(name)) handlers.set(name, new Set());
  handlers.get(name).add(fn);
}

/** 'connecting', 'open' or 'closed'. */
export function connectionStatus() {
  return status;
}

/** Opens the stream; call once. */
export function start() {
  source = new EventSource('/api/events');
  for (const name of NAMES) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      emit(name, data);
    });
  }
  source.addEventListener('reset', () => emit('resync'));
  source.addEventListener('open', () => {
    setStatus('open');
    emit('resync');
  });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus('closed');
      source = null;
      setTimeout(start, RETRY_MS);
    } else {
      setStatus('connecting');
    }
  });
}
