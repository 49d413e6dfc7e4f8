"""Tests of the reference client against a real etcd and a real agent.

test/python_client_test.go runs them: it starts etcd and an agent for
node web1 with the handlers "whoami" (checks a secret parameter) and
"login-url" (a sealed output), and sets CCM_ENDPOINT, CCM_SCHEMAS and
CCM_SIGN_KEY (a key the agent's --action-keys allows).
"""
import os
import unittest

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import ccm


class SealTest(unittest.TestCase):
    def test_a_sealed_value_opens_with_its_key_only(self):
        key, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        pub = ccm.base64.b64encode(ccm._raw(key.public_key())).decode()
        sealed = ccm.seal(pub, "hunter2 wörld")
        self.assertTrue(sealed.startswith("ccm-sealed:"))
        self.assertEqual(ccm.open_sealed(key, sealed), "hunter2 wörld")
        with self.assertRaises(ccm.Error):
            ccm.open_sealed(other, sealed)


@unittest.skipUnless(os.environ.get("CCM_ENDPOINT"), "needs CCM_ENDPOINT: test/python_client_test.go sets it")
class ClusterTest(unittest.TestCase):
    def setUp(self):
        self.c = ccm.Client(os.environ["CCM_ENDPOINT"], schemas=os.environ.get("CCM_SCHEMAS"))
        self.key = os.environ.get("CCM_SIGN_KEY")

    def test_objects(self):
        self.c.put_object("sites", "py", {"user": "bob", "domains": ["py.example"]})
        self.assertEqual(self.c.get_object("sites", "py")["user"], "bob")
        self.assertIn("py", self.c.list_objects("sites"))
        with self.assertRaises(ccm.Error) as e:
            self.c.put_object("sites", "bad", {"user": 42})
        self.assertIn("breaks schemas/sites.json", str(e.exception))
        self.assertIsNone(self.c.get_object("sites", "bad"), "nothing written")
        self.assertTrue(self.c.delete_object("sites", "py"))
        self.assertIsNone(self.c.get_object("sites", "py"))

    def test_a_signed_call_with_a_secret(self):
        reply = self.c.call("web1", "whoami", secrets={"pw": "hunter2"}, sign_key=self.key)
        self.assertEqual(reply["state"], "succeeded", reply)
        self.assertEqual(reply["output"], "got-it\n")

    def test_a_sealed_reply_opens(self):
        reply = self.c.call("web1", "login-url", sign_key=self.key)
        self.assertEqual(reply["state"], "succeeded", reply)
        self.assertIn("token=", reply["output"])

    def test_a_request_no_node_picks_up_is_withdrawn(self):
        with self.assertRaises(ccm.Error) as e:
            self.c.call("web9", "whoami", pickup=0.5, sign_key=self.key)
        self.assertIn("withdrawn", str(e.exception))


if __name__ == "__main__":
    unittest.main()
