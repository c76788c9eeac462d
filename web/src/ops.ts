// Every GraphQL operation the portal sends. Codegen reads these (`/* GraphQL */` tags) and
// writes their result and variable types to src/generated/graphql.ts.

export const SIGN_UP = /* GraphQL */ `
  mutation SignUp($email: String!, $password: String!, $displayName: String!, $org: String) {
    signUp(email: $email, password: $password, displayName: $displayName, organizationName: $org)
  }
`;

export const VERIFY_EMAIL = /* GraphQL */ `
  mutation VerifyEmail($token: String!) {
    verifyEmail(token: $token) { accessToken user { id email displayName } }
  }
`;

export const LOG_IN = /* GraphQL */ `
  mutation LogIn($email: String!, $password: String!) {
    logIn(email: $email, password: $password) { accessToken user { id email displayName } }
  }
`;

export const LOG_OUT = /* GraphQL */ `
  mutation LogOut { logOut }
`;

export const ME = /* GraphQL */ `
  query Me {
    me { id email displayName memberships { role organization { id name } } }
  }
`;

export const ORG = /* GraphQL */ `
  query Org($id: ID!) {
    organization(id: $id) {
      id name createdAt
      members { userId email displayName role }
      labs { id name online canManage shares { organizationId dailyQuota createdAt } }
      sharedLabs { labId organizationId dailyQuota createdAt }
    }
  }
`;

export const CREATE_ORG = /* GraphQL */ `
  mutation CreateOrg($name: String!) { createOrganization(name: $name) { id name } }
`;

export const INVITE = /* GraphQL */ `
  mutation Invite($org: ID!, $email: String!, $role: Role!) {
    inviteMember(organizationId: $org, email: $email, role: $role) { token invitation { id email role expiresAt } }
  }
`;

export const ACCEPT = /* GraphQL */ `
  mutation Accept($token: String!) { acceptInvitation(token: $token) { id name } }
`;

export const SET_ROLE = /* GraphQL */ `
  mutation SetRole($org: ID!, $user: ID!, $role: Role!) { setMemberRole(organizationId: $org, userId: $user, role: $role) }
`;

export const REMOVE_MEMBER = /* GraphQL */ `
  mutation RemoveMember($org: ID!, $user: ID!) { removeMember(organizationId: $org, userId: $user) }
`;

export const SHARE_LAB = /* GraphQL */ `
  mutation ShareLab($lab: ID!, $org: ID!, $quota: Int!) {
    shareLab(labId: $lab, organizationId: $org, dailyQuota: $quota) { labId organizationId dailyQuota }
  }
`;

export const UNSHARE_LAB = /* GraphQL */ `
  mutation UnshareLab($lab: ID!, $org: ID!) { unshareLab(labId: $lab, organizationId: $org) }
`;

export const LABS = /* GraphQL */ `
  query Labs {
    labs { id name organizationId online lastSeenAt agentVersion devices { name kind } canQueue canManage }
  }
`;

export const LAB = /* GraphQL */ `
  query Lab($id: ID!) {
    lab(id: $id) {
      id name organizationId online lastSeenAt agentVersion connectionGeneration
      devices {
        name kind description
        methods { name description measurements setpoint params { name unit min max step required default } }
      }
      canQueue canInstruct canManage
      shares { organizationId dailyQuota rights createdAt }
      agentCredentials { id createdAt revokedAt }
    }
  }
`;

export const LAB_TELEMETRY = /* GraphQL */ `
  query LabTelemetry($id: ID!) {
    lab(id: $id) {
      id
      telemetry {
        state readAt detail
        heaters { device source at pvC setpointC outputPct enabled }
        pumps { device state rateUlMin flowUlMin infusedUl alarm }
      }
    }
  }
`;

export const CREATE_LAB = /* GraphQL */ `
  mutation CreateLab($org: ID!, $name: String!) { createLab(organizationId: $org, name: $name) { id name } }
`;

export const ENROLLMENT_TOKEN = /* GraphQL */ `
  mutation EnrollmentToken($lab: ID!) { createEnrollmentToken(labId: $lab) { token expiresAt } }
`;

export const LAB_STATUS = /* GraphQL */ `
  subscription LabStatus($lab: ID!) { labStatus(labId: $lab) { labId online } }
`;

export const SEND_INSTRUCTION = /* GraphQL */ `
  mutation SendInstruction($lab: ID!, $method: String!, $params: JSON) {
    sendInstruction(labId: $lab, method: $method, params: $params)
  }
`;

export const STOP_LAB = /* GraphQL */ `
  mutation StopLab($lab: ID!) { stopLab(labId: $lab) }
`;

export const RESET_LAB_FAULTS = /* GraphQL */ `
  mutation ResetLabFaults($lab: ID!, $reason: String!) { resetLabFaults(labId: $lab, reason: $reason) }
`;

export const COMPILE = /* GraphQL */ `
  query Compile($lab: ID!, $source: String!, $vars: JSON) {
    compileRecipe(labId: $lab, source: $source, variables: $vars) {
      ok
      diagnostics { code severity message hint line column endLine endColumn }
    }
  }
`;

export const CREATE_CAMPAIGN = /* GraphQL */ `
  mutation CreateCampaign(
    $org: ID!, $lab: ID!, $name: String!, $recipe: String!, $objective: String!, $optimizer: String!,
    $seed: Int, $budget: Int!, $batch: Int, $target: Float, $start: Boolean
  ) {
    createCampaign(
      organizationId: $org, labId: $lab, name: $name, recipe: $recipe, objective: $objective,
      optimizer: $optimizer, seed: $seed, budget: $budget, batchSize: $batch, target: $target, start: $start
    ) { id }
  }
`;

export const CAMPAIGNS = /* GraphQL */ `
  query Campaigns($org: ID!) {
    campaigns(organizationId: $org) {
      id name labId state objective optimizer budget proposals results bestValue createdAt
    }
  }
`;

export const CAMPAIGN = /* GraphQL */ `
  query Campaign($id: ID!, $after: String) {
    campaign(id: $id) {
      id name organizationId labId objective objectiveDirection optimizer seed budget batchSize target priority
      state stateDetail proposals results bestValue bestParameters { name value } bestExperimentId canControl
      createdAt startedAt finishedAt
      parameters { name lower upper step }
      experiments(first: 500, after: $after) {
        nodes { id seq name source state parameters { name value } objectiveValue error }
        pageInfo { hasNextPage endCursor }
        totalCount
      }
    }
  }
`;

export const CAMPAIGN_TABLE = /* GraphQL */ `
  query CampaignTable($id: ID!, $state: ExperimentState, $source: String, $after: String) {
    campaign(id: $id) {
      id
      experiments(first: 100, after: $after, state: $state, source: $source) {
        nodes { id seq name source state parameters { name value } objectiveValue finishedAt }
        pageInfo { hasNextPage endCursor }
        totalCount
      }
    }
  }
`;

export const CAMPAIGN_EVENTS = /* GraphQL */ `
  subscription CampaignEvents($id: ID!) { campaignEvents(campaignId: $id) { kind campaignState experimentState experimentId } }
`;

export const CAMPAIGN_CONTROL = {
  start: /* GraphQL */ `mutation StartCampaign($id: ID!) { startCampaign(id: $id) { id state } }`,
  pause: /* GraphQL */ `mutation PauseCampaign($id: ID!) { pauseCampaign(id: $id) { id state } }`,
  resume: /* GraphQL */ `mutation ResumeCampaign($id: ID!) { resumeCampaign(id: $id) { id state } }`,
  cancel: /* GraphQL */ `mutation CancelCampaign($id: ID!) { cancelCampaign(id: $id) { id state } }`,
} as const;

export const CLONE_CAMPAIGN = /* GraphQL */ `
  mutation CloneCampaign($id: ID!, $name: String) { cloneCampaign(id: $id, name: $name) { id } }
`;

export const QUEUE_EXPERIMENT = /* GraphQL */ `
  mutation QueueExperiment($campaign: ID!, $parameters: JSON!, $name: String) {
    queueExperiment(campaignId: $campaign, parameters: $parameters, name: $name) { id seq }
  }
`;

export const EXPERIMENT = /* GraphQL */ `
  query Experiment($id: ID!) {
    experiment(id: $id) {
      id campaignId labId seq name source parameters { name value } state outcome error objectiveValue
      features {
        excitonWavelengthNm excitonAbsorbance excitonFwhmNm absorbanceAtExciton cdAtExcitonMdeg
        cdExtremumMdeg cdExtremumWavelengthNm gFactor peakCount fitRSquared fitReducedChiSquare
      }
      fittedPeaks {
        shape windowStartNm windowEndNm rSquared
        peaks { index exciton centerNm centerStderrNm amplitude amplitudeStderr fwhmNm fwhmStderrNm area }
        curve { wavelengthNm absorbance }
      }
      attempts queuedAt dispatchedAt startedAt finishedAt provenance
      measurements(first: 1000) { seq name kind data }
    }
  }
`;

export const API_TOKENS = /* GraphQL */ `
  query ApiTokens { apiTokens { id name organizationId scope createdAt revokedAt } }
`;

export const CREATE_API_TOKEN = /* GraphQL */ `
  mutation CreateApiToken($org: ID!, $name: String!, $scope: TokenScope!) {
    createApiToken(organizationId: $org, name: $name, scope: $scope) { token apiToken { id name } }
  }
`;

export const REVOKE_API_TOKEN = /* GraphQL */ `
  mutation RevokeApiToken($id: ID!) { revokeApiToken(id: $id) }
`;
