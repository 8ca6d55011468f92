"""The baseline of benches/fleet_logoff.rs: what users do today without sessiongate — a
sequential loop of log-offs with Microsoft's official Python SDK (azure-identity +
azure-mgmt-desktopvirtualization) against the ARM emulator, relying on the SDK's own retry
policy for 429s. Reads {info, targets: [[host, id], ...]}; prints one JSON line with the
wall time and the counts."""
import json
import sys
import time

info = json.load(open(sys.argv[1]))
ca = info["ca_pem_path"]

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.mgmt.desktopvirtualization import DesktopVirtualizationMgmtClient

cred = ClientSecretCredential(
    info["tenant"], info["client_id"], info["client_secret"],
    authority=info["authority_host"], disable_instance_discovery=True, connection_verify=ca,
)
client = DesktopVirtualizationMgmtClient(
    cred, info["subscription"], base_url=info["base_url"], connection_verify=ca,
)
rg, hp = info["resource_group"], info["pool"]

# One unmeasured call: the token and the connection, as the gateway's run has them warm.
list(client.session_hosts.list(rg, hp))

done = failed = gone = 0
errors = {}
started = time.monotonic()
for host, sid in info["targets"]:
    try:
        client.user_sessions.delete(rg, hp, host, str(sid))
        done += 1
    except ResourceNotFoundError:
        gone += 1
    except HttpResponseError as e:
        failed += 1
        errors[str(e.status_code)] = errors.get(str(e.status_code), 0) + 1
took = time.monotonic() - started
print(json.dumps({"secs": took, "done": done, "already_gone": gone, "failed": failed, "errors": errors}))
