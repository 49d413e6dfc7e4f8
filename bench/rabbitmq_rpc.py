#!/usr/bin/python3
"""RabbitMQ RPC, the way hosting platforms call node actions today.

The seeds' pattern: an exchange per action, a consumer per node that execs
the handler (/bin/true) for each message, a reply_to queue and a
correlation id. Prints the round trips of CALLS calls to one node, in
milliseconds, as JSON: {"p50": ..., "p90": ...}.

MODE "transient" (the default) is the seeds' pattern: transient messages,
exclusive queues, no confirms. MODE "durable" is the fair peer of ccm,
whose requests and replies are fsync'd by etcd: durable exchange and
queues, persistent messages (delivery_mode 2), and publisher confirms on
both the request and the reply, so that each publish returns once the
broker has it on disk.

usage: rabbitmq_rpc.py PORT CALLS [MODE]
"""
import json
import subprocess
import sys
import threading
import time
import uuid

import pika

port, calls = int(sys.argv[1]), int(sys.argv[2])
durable = len(sys.argv) > 3 and sys.argv[3] == "durable"
persistent = 2 if durable else 1
# A broker keeps an exchange's and a durable queue's kind: each mode has
# its own names.
exchange = "action.true" + (".durable" if durable else "")
params = pika.ConnectionParameters(host="127.0.0.1", port=port)
ready = threading.Event()


def node():
    """The node's consumer: exec the handler, reply to reply_to."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    if durable:
        ch.confirm_delivery()
    ch.exchange_declare(exchange, exchange_type="direct", durable=durable)
    q = ch.queue_declare("node.web1." + exchange, exclusive=not durable, durable=durable).method.queue
    ch.queue_bind(q, exchange, routing_key="web1")

    def on_request(ch, method, props, body):
        rc = subprocess.run(["/bin/true"]).returncode
        ch.basic_publish("", props.reply_to, json.dumps({"state": "succeeded", "exit_code": rc}),
                         pika.BasicProperties(correlation_id=props.correlation_id, delivery_mode=persistent))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_request)
    ready.set()
    ch.start_consuming()


threading.Thread(target=node, daemon=True).start()
ready.wait()

conn = pika.BlockingConnection(params)
ch = conn.channel()
if durable:
    ch.confirm_delivery()
    callback = ch.queue_declare("caller.replies", durable=True).method.queue
else:
    callback = ch.queue_declare("", exclusive=True).method.queue
reply = {}


def on_reply(ch, method, props, body):
    reply[props.correlation_id] = body


ch.basic_consume(callback, on_reply, auto_ack=True)
took = []
for i in range(20 + calls):
    cid = str(uuid.uuid4())
    start = time.perf_counter()
    ch.basic_publish(exchange, "web1", json.dumps({"action": "true", "params": {}}),
                     pika.BasicProperties(reply_to=callback, correlation_id=cid, delivery_mode=persistent))
    while cid not in reply:
        conn.process_data_events(time_limit=None)
    if i >= 20:  # after the warm-up
        took.append((time.perf_counter() - start) * 1000)
took.sort()
print(json.dumps({"p50": took[len(took) // 2], "p90": took[len(took) * 9 // 10]}))
