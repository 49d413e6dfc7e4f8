#!/usr/bin/python3
"""RabbitMQ RPC, the way hosting platforms call node actions today.

The seeds' pattern: an exchange per action, a consumer per node that execs
the handler (/bin/true) for each message, a reply_to queue and a
correlation id. Prints the round trips of CALLS calls to one node, in
milliseconds, as JSON: {"p50": ..., "p90": ...}.

usage: rabbitmq_rpc.py PORT CALLS
"""
import json
import subprocess
import sys
import threading
import time
import uuid

import pika

port, calls = int(sys.argv[1]), int(sys.argv[2])
params = pika.ConnectionParameters(host="127.0.0.1", port=port)
ready = threading.Event()


def node():
    """The node's consumer: exec the handler, reply to reply_to."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare("action.true", exchange_type="direct")
    q = ch.queue_declare("node.web1.true", exclusive=True).method.queue
    ch.queue_bind(q, "action.true", routing_key="web1")

    def on_request(ch, method, props, body):
        rc = subprocess.run(["/bin/true"]).returncode
        ch.basic_publish("", props.reply_to, json.dumps({"state": "succeeded", "exit_code": rc}),
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_request)
    ready.set()
    ch.start_consuming()


threading.Thread(target=node, daemon=True).start()
ready.wait()

conn = pika.BlockingConnection(params)
ch = conn.channel()
callback = ch.queue_declare("", exclusive=True).method.queue
reply = {}


def on_reply(ch, method, props, body):
    reply[props.correlation_id] = body


ch.basic_consume(callback, on_reply, auto_ack=True)
took = []
for i in range(20 + calls):
    cid = str(uuid.uuid4())
    start = time.perf_counter()
    ch.basic_publish("action.true", "web1", json.dumps({"action": "true", "params": {}}),
                     pika.BasicProperties(reply_to=callback, correlation_id=cid))
    while cid not in reply:
        conn.process_data_events(time_limit=None)
    if i >= 20:  # after the warm-up
        took.append((time.perf_counter() - start) * 1000)
took.sort()
print(json.dumps({"p50": took[len(took) // 2], "p90": took[len(took) * 9 // 10]}))
