//! MAOSIC cloud server: GraphQL API, storage, agent gateway.
