-- Argo CD health check for modelops.dev/ModelDeployment (kstatus conditions).
-- Healthy: Ready=True for the current generation. Degraded: Stalled=True, Failed or RolledBack.
-- Progressing: a canary in progress (phase Progressing, the stable version still serving), and
-- anything else (converting, deploying, retrying, not yet observed).
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the ModelDeployment"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local ready, stalled, reconciling = nil, nil, nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Stalled" then stalled = c end
    if c.type == "Reconciling" then reconciling = c end
  end
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
if obj.status.phase == "Failed" or obj.status.phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "ModelDeployment is " .. obj.status.phase
  return hs
end
if obj.status.phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = (reconciling ~= nil and reconciling.message) or "canary in progress"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.message ~= nil and reconciling.message ~= "" then
  hs.message = reconciling.message
elseif ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Phase " .. (obj.status.phase or "Pending")
end
return hs
