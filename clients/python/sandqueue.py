"""sandqueue HTTP API client: one file, Python 3.8+ standard library only.

    from sandqueue import Client
    sq = Client("http://127.0.0.1:8380", api_key="sq_...")
    result = sq.run({"kind": "python", "code": "print(6*7)"}, timeout=60)
    print(result["status"], result["stdout"])

    job_id = sq.enqueue({"kind": "shell", "script": "make test"}, idempotency_key="build-42")
    result = sq.wait(job_id, timeout=600)   # long-polls; raises SandqueueError on timeout
    sq.cancel(job_id)

Webhook receivers check each delivery with verify_webhook(secret, headers,
body), the Standard Webhooks scheme (HMAC-SHA256, whsec_ secrets).

Errors are SandqueueError with the API's stable code (SANDQ_ERR_*), the
HTTP status and, for a bad spec, the field paths in .errors.
"""

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "SandqueueError", "WebhookVerificationError", "verify_webhook"]

# One long-poll request holds at most this long (the server caps it too).
_POLL_SECONDS = 30.0


class SandqueueError(Exception):
    """An API error: .code (SANDQ_ERR_*), .status (HTTP), .detail, .errors ([{path, message}]), .retry_after (seconds or None)."""

    def __init__(self, code, status, detail, errors=None, retry_after=None):
        super().__init__("%s (%s): %s" % (code, status, detail))
        self.code = code
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after


class WebhookVerificationError(Exception):
    """A webhook whose signature or timestamp does not check out."""


class Client:
    """A client for one sandqueue API (one queue). `timeout` bounds each HTTP request that does not long-poll."""

    def __init__(self, base_url, api_key, timeout=30.0, max_rate_limit_retries=3):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_rate_limit_retries = max_rate_limit_retries

    # -- jobs -------------------------------------------------------------

    def enqueue(self, spec, idempotency_key=None):
        """Enqueues one job spec; returns its id. An invalid spec raises SandqueueError (SANDQ_ERR_SPEC_INVALID) and enqueues nothing."""
        return self._request("POST", "/v1/jobs", spec, _idem(idempotency_key))["id"]

    def enqueue_many(self, specs, idempotency_key=None):
        """Enqueues a batch in one request; returns the ids in order. One bad spec refuses the whole batch (paths name jobs[i])."""
        return self._request("POST", "/v1/jobs", {"jobs": list(specs)}, _idem(idempotency_key))["ids"]

    def get(self, job_id):
        """{"id", "state", "result"}: state is queued, running, retrying or finished (then result is set)."""
        return self._request("GET", "/v1/jobs/" + _q(job_id))

    def wait(self, job_id, timeout=60.0):
        """The job's result once it has one. Long-polls; raises SandqueueError (SANDQ_ERR_RESULT_TIMEOUT) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandqueueError("SANDQ_ERR_RESULT_TIMEOUT", 0, "no result for job %s within %ss" % (job_id, timeout))
            wait = min(left, _POLL_SECONDS)
            view = self._request("GET", "/v1/jobs/%s?wait=%dms" % (_q(job_id), max(1, int(wait * 1000))), timeout=wait + self.timeout)
            if view["state"] == "finished":
                return view["result"]

    def run(self, spec, timeout=60.0, idempotency_key=None):
        """Enqueues a spec and waits for its result (a dict: status, exitCode, stdout, stderr, ...)."""
        return self.wait(self.enqueue(spec, idempotency_key), timeout)

    def cancel(self, job_id):
        """Cancels a job: a waiting one is removed, a running one ends killed/cancelled. False when it had already finished."""
        return self._request("DELETE", "/v1/jobs/" + _q(job_id))["cancelled"]

    def events(self, job_id):
        """Yields (event, data) from the job's Server-Sent Events: "state" events, then one "result" or "cancelled"."""
        req = self._build("GET", "/v1/jobs/%s/events" % _q(job_id))
        with self._open(req, timeout=None) as res:
            event, data = None, []
            for raw in res:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line == "":
                    if event is not None:
                        yield event, json.loads("\n".join(data))
                        if event in ("result", "cancelled", "error"):
                            return
                    event, data = None, []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def snapshot(self, snapshot_id, path):
        """Writes a workspace snapshot (a tar) to `path`, streamed; returns the number of bytes."""
        req = self._build("GET", "/v1/snapshots/" + _q(snapshot_id))
        n = 0
        with self._open(req, timeout=self.timeout) as res, open(path, "wb") as out:
            while True:
                chunk = res.read(1 << 16)
                if not chunk:
                    return n
                out.write(chunk)
                n += len(chunk)

    # -- plumbing ---------------------------------------------------------

    def _build(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        h = {"Authorization": "Bearer " + self.api_key, "Accept": "application/json"}
        if data is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return urllib.request.Request(self.base_url + path, data=data, method=method, headers=h)

    def _open(self, req, timeout):
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise _api_error(e)
        except urllib.error.URLError as e:
            raise SandqueueError("SANDQ_ERR_UNREACHABLE", 0, "cannot reach %s: %s" % (self.base_url, e.reason))

    def _request(self, method, path, body=None, headers=None, timeout=None):
        tries = 0
        while True:
            req = self._build(method, path, body, headers)
            try:
                with self._open(req, timeout if timeout is not None else self.timeout) as res:
                    return json.loads(res.read().decode("utf-8"))
            except SandqueueError as e:
                # Over the key's rate: wait as told, a few times. Submits are idempotent only with a key,
                # but a 429 means nothing was enqueued.
                if e.status == 429 and e.retry_after is not None and tries < self.max_rate_limit_retries:
                    tries += 1
                    time.sleep(e.retry_after)
                    continue
                raise


def _q(s):
    return urllib.parse.quote(s, safe="")


def _idem(key):
    return {"Idempotency-Key": key} if key is not None else None


def _api_error(e):
    retry_after = e.headers.get("Retry-After")
    try:
        p = json.loads(e.read().decode("utf-8"))
    except ValueError:
        p = {}
    return SandqueueError(
        p.get("code", "SANDQ_ERR_HTTP_%d" % e.code),
        e.code,
        p.get("detail", e.reason),
        p.get("errors"),
        float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def verify_webhook(secret, headers, body, tolerance=300, now=None):
    """Checks a webhook delivery (Standard Webhooks) and returns its parsed JSON payload.

    secret: the key's "whsec_..." secret (sandqueue api-key webhook-secret NAME).
    headers: the request's headers (any mapping; names are matched case-insensitively).
    body: the raw request body (bytes or str), exactly as received.
    Raises WebhookVerificationError when no signature matches or the timestamp is
    more than `tolerance` seconds away from now (a replayed delivery).
    """
    h = {k.lower(): v for k, v in dict(headers).items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts_int = int(ts)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer")
    if abs((time.time() if now is None else now) - ts_int) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (%ss)" % tolerance)
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    expected = base64.b64encode(hmac.new(key, b"%s.%d.%s" % (msg_id.encode("utf-8"), ts_int, payload), hashlib.sha256).digest()).decode("ascii")
    for sig in sigs.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(payload.decode("utf-8"))
    raise WebhookVerificationError("no matching signature")
