"""Run by tests/test_server_openai2_clients.py in the `.venv-clients` environment (LlamaIndex's
OpenAI client pins openai<3, so it and the openai 2.x SDK live apart from the main test
environment). It imports its libraries first (seconds: the test starts it early, in the
background), then reads one line `URL<TAB>MODEL<TAB>GUIDED_REGEX` and prints one JSON object:
what LlamaIndex's stream_chat_with_tools and openai 2.x's chat.completions.stream assembled."""
import json
import sys

import openai
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

url, model, regex = sys.stdin.readline().rstrip("\n").split("\t")


def get_weather(city: str, unit: str) -> str:
    """The weather in a city."""
    return f"18 degrees {unit} in {city}"


tool = FunctionTool.from_defaults(fn=get_weather)
llm = OpenAILike(model=model, api_base=url + "/v1", api_key="unused", is_chat_model=True,
                 is_function_calling_model=True, max_tokens=128, max_retries=0,
                 additional_kwargs={"seed": 0, "extra_body": {"guided_regex": regex}})
last = None
for last in llm.stream_chat_with_tools([tool], chat_history=[ChatMessage(role="user", content="Weather in Paris?")]):
    pass
calls = llm.get_tool_calls_from_response(last, error_on_no_tool_call=False)
client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": tool.metadata.get_parameters_dict()}}]
with client.chat.completions.stream(model=model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                    tools=tools, max_tokens=128, seed=0, extra_body={"guided_regex": regex}) as stream:
    final = stream.get_final_completion()
print(json.dumps({
    "openai": openai.__version__,
    "llamaindex": [[c.tool_name, c.tool_kwargs] for c in calls],
    "openai_stream": [[c.function.name, json.loads(c.function.arguments)] for c in final.choices[0].message.tool_calls],
}))
