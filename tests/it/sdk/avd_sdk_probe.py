"""Drives the ARM emulator with Microsoft's official Python SDK (azure-identity +
azure-mgmt-desktopvirtualization), changing nothing but the base URL, the authority and the
CA. Prints one line per check; exits non-zero on the first failure."""
import json
import sys

info = json.load(open(sys.argv[1]))
ca = info["ca_pem_path"]

from azure.core.exceptions import ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.mgmt.desktopvirtualization import DesktopVirtualizationMgmtClient
from azure.mgmt.desktopvirtualization.models import SendMessage, SessionHostPatch

cred = ClientSecretCredential(
    info["tenant"], info["client_id"], info["client_secret"],
    authority=info["authority_host"], disable_instance_discovery=True, connection_verify=ca,
)
# No credential_scopes: the SDK asks for its default ARM audience
# (https://management.azure.com/.default), which the emulator accepts like the real ARM.
client = DesktopVirtualizationMgmtClient(
    cred, info["subscription"], base_url=info["base_url"], connection_verify=ca,
)
rg, hp = info["resource_group"], info["host_pools"][0]

hosts = list(client.session_hosts.list(rg, hp))
assert len(hosts) == info["expect_hosts"], hosts
sessions = list(client.user_sessions.list_by_host_pool(rg, hp))
assert len(sessions) == info["expect_sessions"], len(sessions)
print("listed", len(hosts), "hosts and", len(sessions), "sessions (paged)")

host = hosts[0].name.split("/")[-1]
on_host = list(client.user_sessions.list(rg, hp, host))
sid = on_host[0].name.split("/")[-1]
s = client.user_sessions.get(rg, hp, host, sid)
assert s.session_state == "Active", s.session_state
assert s.user_principal_name, s

client.user_sessions.disconnect(rg, hp, host, sid)
assert client.user_sessions.get(rg, hp, host, sid).session_state == "Disconnected"
client.user_sessions.send_message(rg, hp, host, sid, SendMessage(message_title="t", message_body="b"))
client.session_hosts.update(rg, hp, host, session_host=SessionHostPatch(allow_new_session=False))
assert client.session_hosts.get(rg, hp, host).allow_new_session is False
client.user_sessions.delete(rg, hp, host, sid, force=True)
assert len(list(client.user_sessions.list(rg, hp, host))) == len(on_host) - 1
try:
    client.user_sessions.get(rg, hp, host, sid)
    raise SystemExit("a deleted session was still found")
except ResourceNotFoundError:
    pass
print("OK")
