import streamlit as st
st.title('Weights')
st.info('Coming soon.')
