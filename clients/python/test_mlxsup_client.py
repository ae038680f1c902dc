"""Tests of mlxsup_client against a real daemon: ``MLXSUP_SOCKET`` names its socket,
``MLXSUP_TEST_MODELS`` (comma-separated) names tiny models it serves. Run by
tests/python_client.rs (``cargo test``); by hand: ``python3 -m unittest -v`` in this
folder with those two variables set."""

import os
import unittest

import mlxsup_client as m

SOCKET = os.environ.get("MLXSUP_SOCKET")
MODELS = [x for x in os.environ.get("MLXSUP_TEST_MODELS", "").split(",") if x]


@unittest.skipUnless(SOCKET and len(MODELS) >= 3, "needs MLXSUP_SOCKET and 3 MLXSUP_TEST_MODELS")
class AgainstADaemon(unittest.TestCase):
    def client(self):
        c = m.Client(SOCKET, timeout=300)
        self.addCleanup(c.close)
        return c

    def test_status_names_the_daemon_and_its_budget(self):
        c = self.client()
        self.assertEqual(c.daemon["role"], "daemon")
        self.assertGreaterEqual(c.daemon["version"], (1, 5))
        s = c.status()
        self.assertTrue(s["version"].startswith("mlxsup "), s)
        self.assertGreater(s["budget_bytes"], 0)
        self.assertEqual(s["socket"], SOCKET)

    def test_load_then_ps_shows_it_ready(self):
        c = self.client()
        st = c.load(MODELS[0])
        self.assertEqual(st["state"], "ready", st)
        self.assertGreater(st["estimate_bytes"], 0)
        names = {x["name"]: x for x in c.ps()}
        self.assertIn(MODELS[0], names)
        self.assertEqual(names[MODELS[0]]["state"], "ready")

    def test_generate_streams_tokens_then_done(self):
        c = self.client()
        gen = c.generate(MODELS[0], "The quick brown fox", max_tokens=5)
        kinds, text = [], []
        for kind, value in gen:
            kinds.append(kind)
            if kind == "token":
                text.append(value)
        self.assertEqual(len(text), 5, kinds)
        self.assertIn("telemetry", kinds)
        self.assertEqual(gen.done["done"]["generated_tokens"], 5)
        self.assertEqual(gen.done["done"]["finish"], "length")
        self.assertGreater(gen.done["context_used"], 5)

    def test_a_queued_generation_is_cancelled(self):
        c, other = self.client(), self.client()
        # The first generation stalls at its second token and keeps the model busy...
        stalled = other.generate(MODELS[1], "x", max_tokens=4,
                                 fault={"action": "Stall", "point": {"Decode": 2}})
        it = iter(stalled)
        self.assertEqual(next(k for k, _ in it if k == "token"), "token")
        # ...so this one waits in the queue, and the cancel answers it.
        queued = c.generate(MODELS[1], "y", max_tokens=4)
        c.cancel(queued.id)
        with self.assertRaises(m.Cancelled):
            list(queued)
        self.assertIsNone(queued.done)

    def test_a_worker_that_dies_is_a_failed_reply_with_its_kind(self):
        c = self.client()
        gen = c.generate(MODELS[2], "Hello", max_tokens=4,
                         fault={"action": {"Exit": 3}, "point": {"Decode": 2}})
        tokens = []
        with self.assertRaises(m.Failed) as e:
            for kind, value in gen:
                if kind == "token":
                    tokens.append(value)
        self.assertEqual(e.exception.kind, "exited", e.exception.failure)
        self.assertEqual(e.exception.failure["exit_code"], 3)
        self.assertEqual(len(tokens), 1)

    def test_an_unknown_model_is_a_bad_request(self):
        c = self.client()
        with self.assertRaises(m.BadRequest) as e:
            c.load("no-such-model-here")
        self.assertIn("no-such-model-here", str(e.exception))

    def test_estimate_arrives_typed(self):
        c = self.client()
        c.unload(MODELS[0])
        events = dict((k, v) for k, v in c.generate(MODELS[0], "Hi", max_tokens=1))
        est = events["estimate"]
        self.assertEqual(est["verdict"], "fits")
        self.assertGreater(est["total_bytes"], est["weights_bytes"])
        self.assertEqual(est["report"]["total_bytes"], est["total_bytes"])


class Offline(unittest.TestCase):
    def test_the_hello_is_postcard(self):
        body = m.encode_hello("b", 300)
        self.assertEqual(body, bytes([0, 1, 5, 3, 1, ord("b"), 0xAC, 0x02]))
        back = m.decode_hello(body)
        self.assertEqual(back["version"], (1, 5))
        self.assertEqual((back["role"], back["build"], back["pid"]), ("client", "b", 300))

    def test_no_daemon_is_a_protocol_error(self):
        with self.assertRaises(m.ProtocolError):
            m.Client("/nonexistent/mlxsup.sock")


if __name__ == "__main__":
    unittest.main()
