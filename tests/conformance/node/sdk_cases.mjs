// The official OpenAI Node SDK against the mesh, one case per run:
//   node sdk_cases.mjs <base url, e.g. http://127.0.0.1:8080> <case>
// prints what the case observed as one JSON object on stdout (tests/conformance/test_node_sdk.py
// asserts on it). Errors a case expects are caught and reported; any other error exits 1.
import OpenAI from 'openai';

const [baseURL, caseName] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });

const BASE_MODEL = 'gemma-3-270m';
const INSTRUCT_MODEL = 'qwen2.5-coder-0.5b-instruct';
const EMBEDDING_MODEL = 'all-minilm-l6-v2';
const QUESTION = [{ role: 'user', content: 'What is the capital of France?' }];
const WEATHER_QUESTION = [{ role: 'user', content: 'What is the weather like in Paris right now?' }];
const GET_WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The current weather in a city.',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', maxLength: 24 },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
    strict: true,
  },
};
const FORCED_WEATHER = {
  model: INSTRUCT_MODEL,
  messages: WEATHER_QUESTION,
  tools: [GET_WEATHER],
  tool_choice: { type: 'function', function: { name: 'get_weather' } },
  temperature: 0,
  max_tokens: 64,
};

function apiError(err) {
  if (!(err instanceof OpenAI.APIError)) throw err;
  return {
    name: err.constructor.name,
    isNotFound: err instanceof OpenAI.NotFoundError,
    isBadRequest: err instanceof OpenAI.BadRequestError,
    status: err.status,
    message: err.message,
    param: err.param ?? null,
    code: err.code ?? null,
    type: err.type ?? null,
  };
}

const cases = {
  async chat() {
    const reply = await client.chat.completions.create({ model: BASE_MODEL, messages: QUESTION, max_tokens: 16 });
    const [choice] = reply.choices;
    return { object: reply.object, model: reply.model, message: choice.message, finish_reason: choice.finish_reason, usage: reply.usage };
  },

  async stream() {
    const request = { model: BASE_MODEL, messages: QUESTION, max_tokens: 16, temperature: 0 };
    const unary = await client.chat.completions.create(request);
    const pieces = [];
    const finishReasons = [];
    let role = null;
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      role ??= choice.delta.role ?? null;
      if (choice.delta.content) pieces.push(choice.delta.content);
      if (choice.finish_reason) finishReasons.push(choice.finish_reason);
    }
    return {
      unary: unary.choices[0].message.content,
      unary_finish_reason: unary.choices[0].finish_reason,
      streamed: pieces.join(''),
      pieces: pieces.length,
      role,
      finish_reasons: finishReasons,
    };
  },

  async embeddings() {
    // No encoding_format: the SDK asks for base64 and decodes it to floats.
    const batch = await client.embeddings.create({ model: EMBEDDING_MODEL, input: ['hello world', 'goodbye'] });
    const floats = await client.embeddings.create({ model: EMBEDDING_MODEL, input: 'hello world', encoding_format: 'float' });
    return {
      indexes: batch.data.map((d) => d.index),
      dimensions: batch.data.map((d) => d.embedding.length),
      base64_decoded: Array.from(batch.data[0].embedding),
      float: floats.data[0].embedding,
    };
  },

  async tool_call() {
    const reply = await client.chat.completions.create(FORCED_WEATHER);
    return { choice: reply.choices[0] };
  },

  async tool_call_stream() {
    const stream = client.chat.completions.stream(FORCED_WEATHER);
    const argumentDeltas = [];
    stream.on('tool_calls.function.arguments.delta', (event) => argumentDeltas.push(event.arguments_delta));
    const final = await stream.finalChatCompletion();
    return { choice: final.choices[0], argument_deltas: argumentDeltas };
  },

  async structured() {
    const schema = {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 24 }, country: { type: 'string', maxLength: 24 } },
      required: ['city', 'country'],
      additionalProperties: false,
    };
    const reply = await client.chat.completions.create({
      model: INSTRUCT_MODEL,
      messages: [{ role: 'user', content: 'Which city is the Eiffel Tower in? Give the city and its country.' }],
      response_format: { type: 'json_schema', json_schema: { name: 'city', strict: true, schema } },
      temperature: 0,
      max_tokens: 64,
    });
    return { schema, content: reply.choices[0].message.content, finish_reason: reply.choices[0].finish_reason };
  },

  async not_found() {
    try {
      await client.chat.completions.create({ model: 'no-such-model', messages: QUESTION, max_tokens: 4 });
    } catch (err) {
      return apiError(err);
    }
    return { error: null };
  },

  async bad_request() {
    try {
      await client.completions.create({ model: BASE_MODEL, prompt: 'Paris is', suffix: ' in France.', max_tokens: 4 });
    } catch (err) {
      return apiError(err);
    }
    return { error: null };
  },
};

if (!(caseName in cases)) {
  console.error(`unknown case ${JSON.stringify(caseName)}; cases: ${Object.keys(cases).join(', ')}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await cases[caseName]()) + '\n');
