"""Fan-out to this process's subscribers: `hub` (one feed, a pump, per watched project), `outbox` (one
bounded outbox per subscriber) and `writer` (the one loop that empties an outbox into a websocket or
an SSE stream)."""
