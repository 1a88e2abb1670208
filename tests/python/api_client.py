"""An independent gRPC client of Gantry's operator API, in Python.

Proves that a client no one on the team wrote works against the coordinator:
it compiles proto/ with grpcio-tools, connects over TLS trusting the
coordinator's CA and sends an API token, checks the standard health service
and server reflection, and exercises the operator API. Run by
tests/tests/python_client.rs; prints one JSON object with what it saw.

Usage: api_client.py COORDINATOR_ADDR PROTO_DIR APP CA_PEM_FILE TOKEN
"""

import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def compile_protos(proto_dir, out_dir):
    files = [os.path.join("gantry/v1", f) for f in ("common.proto", "agent.proto", "operator.proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files])
    if status != 0:
        raise SystemExit(f"protoc failed with {status}")
    for package in ("gantry", "gantry/v1"):
        open(os.path.join(out_dir, package, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("gantry.v1.common_pb2"),
        importlib.import_module("gantry.v1.operator_pb2"),
        importlib.import_module("gantry.v1.operator_pb2_grpc"),
    )


def main():
    addr, proto_dir, app, ca_file, token = sys.argv[1:6]
    out_dir = tempfile.mkdtemp()
    common, pb, pb_grpc = compile_protos(proto_dir, out_dir)
    with open(ca_file, "rb") as f:
        tls = grpc.ssl_channel_credentials(root_certificates=f.read())
    # The server certificate names localhost and 127.0.0.1.
    options = [("grpc.ssl_target_name_override", "localhost")]
    seen = {}

    # Without a token the operator API refuses.
    anonymous = pb_grpc.OperatorServiceStub(grpc.secure_channel(addr, tls, options))
    try:
        anonymous.ListApps(pb.ListAppsRequest())
        seen["without_token"] = "accepted"
    except grpc.RpcError as err:
        seen["without_token"] = err.code().name

    with_token = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    channel = grpc.secure_channel(addr, with_token, options)

    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="gantry.v1.OperatorService"))
    seen["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    seen["services"] = sorted(s.name for s in next(answers).list_services_response.service)

    operator = pb_grpc.OperatorServiceStub(channel)
    seen["environments"] = [e.name for e in operator.ListEnvironments(pb.ListEnvironmentsRequest()).environments]
    seen["apps"] = [a.name for a in operator.ListApps(pb.ListAppsRequest()).apps]

    try:
        operator.Deploy(pb.DeployRequest(app=app, env="dev", branch="--upload-pack=evil"))
        seen["bad_branch"] = "accepted"
    except grpc.RpcError as err:
        seen["bad_branch"] = [err.code().name, err.details()]

    job = operator.Deploy(pb.DeployRequest(app=app, env="dev", branch="main"))
    seen["deployed"] = {"id": job.id, "state": common.JobState.Name(job.state), "reason": job.reason}
    got = operator.GetJob(pb.GetJobRequest(id=job.id))
    seen["commit_matches"] = got.commit == job.commit and len(got.commit) == 40
    cancelled = operator.CancelJob(pb.CancelJobRequest(id=job.id))
    seen["cancelled_reason"] = cancelled.reason
    seen["jobs"] = [j.id for j in operator.ListJobs(pb.ListJobsRequest(app=app)).jobs]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
